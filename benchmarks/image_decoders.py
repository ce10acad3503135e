"""Image decoders for the training input pipeline: decode + random-resized-crop + resize, per core.

RESULTS_PLACEHOLDER
"""

from __future__ import annotations

import os

# One core per worker process: keep every library's own thread pool at one thread.
for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'VIPS_CONCURRENCY'):
    os.environ.setdefault(_var, '1')

import argparse
import importlib.metadata
import io
import math
import random
import sys
import time

import numpy as np
from PIL import Image

SIZE = 224
SCALE = (0.9, 1.0)        # open_clip's RandomResizedCrop area scale
RATIO = (3 / 4, 4 / 3)    # torchvision's default aspect-ratio range


def crop_params(rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params -> (left, top, w, h) in source pixels."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(RATIO):
        w, h = width, int(round(width / min(RATIO)))
    elif in_ratio > max(RATIO):
        w, h = int(round(height * max(RATIO))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def pow2_factor(w: int, h: int, limit: int = 8) -> int:
    """Largest of 1, 2, 4, 8 that keeps a w x h crop at least SIZE x SIZE after shrinking."""
    f = 1
    while f * 2 <= limit and w // (f * 2) >= SIZE and h // (f * 2) >= SIZE:
        f *= 2
    return f


def _pil_rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == 'RGB' else im.convert('RGB')


def _pil_resize(im: Image.Image, box, resample) -> np.ndarray:
    return np.asarray(im.resize((SIZE, SIZE), resample, box=box))


# --- candidates: fn(data: bytes, rng) -> uint8 [224, 224, 3] -------------------------------
# Each reads the source size (header), draws the crop from rng exactly like the reference,
# then decodes (at a reduced size where the library can) and resizes.

def pil_full(resample):
    def fn(data, rng):
        im = Image.open(io.BytesIO(data))
        left, top, w, h = crop_params(rng, *im.size)
        return _pil_resize(_pil_rgb(im), (left, top, left + w, top + h), resample)
    return fn


def pil_draft(resample):
    def fn(data, rng):
        im = Image.open(io.BytesIO(data))
        width, height = im.size
        left, top, w, h = crop_params(rng, width, height)
        # JPEG only (a no-op for other formats): DCT-domain 1/2, 1/4, 1/8 decode, keeping
        # the crop at least 224 px on each side.
        r = im.draft('RGB', (-(-SIZE * width // w), -(-SIZE * height // h)))
        s = r[1][2] / width if r else 1.0
        box = (left * s, top * s, (left + w) * s, (top + h) * s)
        return _pil_resize(_pil_rgb(im), box, resample)
    return fn


def simplejpeg_fn(pow2: bool, resample):
    import simplejpeg
    if isinstance(resample, str):   # an OpenCV interpolation name
        import cv2
        cv2.setNumThreads(1)
        interp = getattr(cv2, resample)

    def fn(data, rng):
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        left, top, w, h = crop_params(rng, width, height)
        if pow2:   # only 1/2, 1/4, 1/8 (the SIMD IDCT sizes)
            f = pow2_factor(w, h)
            mh, mw = -(-height // f), -(-width // f)
        else:      # any n/8 scale libjpeg-turbo offers
            mh, mw = -(-SIZE * height // h), -(-SIZE * width // w)
        arr = simplejpeg.decode_jpeg(data, colorspace='RGB', min_height=mh, min_width=mw)
        s = round(8 * arr.shape[1] / width) / 8
        box = (left * s, top * s, (left + w) * s, (top + h) * s)
        if isinstance(resample, str):
            x0, y0, x1, y1 = (round(v) for v in box)
            return cv2.resize(arr[y0:y1, x0:x1], (SIZE, SIZE), interpolation=interp)
        return _pil_resize(Image.fromarray(arr), box, resample)
    return fn


def cv2_fn(reduced: bool, interp_name: str):
    import cv2
    cv2.setNumThreads(1)
    interp = getattr(cv2, interp_name)
    # BGR throughout (the REDUCED flags have no RGB variant), RGB after the resize where it is
    # cheapest. EXIF orientation ignored, as Pillow (and so open_clip) does: the crop is
    # drawn in the header's (unrotated) size.
    flags = {f: flag | cv2.IMREAD_IGNORE_ORIENTATION for f, flag in
             {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
              4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}.items()}

    def fn(data, rng):
        buf = np.frombuffer(data, np.uint8)
        if reduced:   # the size has to be known before decoding: Pillow reads the header
            width, height = Image.open(io.BytesIO(data)).size
            left, top, w, h = crop_params(rng, width, height)
            f = pow2_factor(w, h)
            arr = cv2.imdecode(buf, flags[f])
        else:
            arr = cv2.imdecode(buf, flags[1])
            height, width = arr.shape[:2]
            left, top, w, h = crop_params(rng, width, height)
            f = 1
        x0, y0 = round(left / f), round(top / f)
        x1, y1 = round((left + w) / f), round((top + h) / f)
        out = cv2.resize(arr[y0:y1, x0:x1], (SIZE, SIZE), interpolation=interp)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return fn


def pyvips_fn(kernel: str):
    import pyvips
    pyvips.cache_set_max(0)          # no operation cache: every call really decodes
    pyvips.cache_set_max_mem(0)

    def fn(data, rng):
        im = pyvips.Image.new_from_buffer(data, '')
        width, height = im.width, im.height
        left, top, w, h = crop_params(rng, width, height)
        f = 1
        if im.get('vips-loader') == 'jpegload_buffer':
            f = pow2_factor(w, h)
            if f > 1:   # shrink-on-load: libjpeg DCT scaling
                im = pyvips.Image.new_from_buffer(data, '', shrink=f)
        if im.bands == 4:
            im = im.flatten()
        elif im.bands == 1:
            im = im.colourspace('srgb')
        x0, y0 = round(left / f), round(top / f)
        cw, ch = round((left + w) / f) - x0, round((top + h) / f) - y0
        im = im.crop(x0, y0, cw, ch).resize(SIZE / cw, vscale=SIZE / ch, kernel=kernel)
        return im.numpy()
    return fn


def imagecodecs_fn(resample):
    import imagecodecs
    decoders = {b'\xff\xd8': imagecodecs.jpeg8_decode, b'\x89P': imagecodecs.png_decode,
                b'RI': imagecodecs.webp_decode}

    def fn(data, rng):
        arr = decoders[data[:2]](data)
        height, width = arr.shape[:2]
        left, top, w, h = crop_params(rng, width, height)
        return _pil_resize(Image.fromarray(arr[..., :3]), (left, top, left + w, top + h), resample)
    return fn


def torchvision_fn(interp_name: str):
    import torch
    import torchvision.io
    import torchvision.transforms.v2.functional as F
    torch.set_num_threads(1)
    interp = getattr(torchvision.transforms.InterpolationMode, interp_name)

    def fn(data, rng):
        img = torchvision.io.decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                          mode=torchvision.io.ImageReadMode.RGB)
        height, width = img.shape[1:]
        left, top, w, h = crop_params(rng, width, height)
        out = F.resized_crop(img, top, left, h, w, [SIZE, SIZE], interpolation=interp,
                             antialias=True)
        return out.permute(1, 2, 0).numpy()
    return fn


def turbojpeg_fn():
    from turbojpeg import TJPF_RGB, TurboJPEG
    jpeg = TurboJPEG()   # needs the system libturbojpeg (Debian: libturbojpeg0)

    def fn(data, rng):
        width, height, _, _ = jpeg.decode_header(data)
        left, top, w, h = crop_params(rng, width, height)
        f = pow2_factor(w, h)
        arr = jpeg.decode(data, pixel_format=TJPF_RGB, scaling_factor=(1, f))
        box = (left / f, top / f, (left + w) / f, (top + h) / f)
        return _pil_resize(Image.fromarray(arr), box, Image.BICUBIC)
    return fn


def _pillow_name() -> str:
    try:
        return f"pillow-simd {importlib.metadata.version('pillow-simd')}"
    except importlib.metadata.PackageNotFoundError:
        return f"pillow {importlib.metadata.version('pillow')}"


ALL = ('jpeg', 'png', 'webp')


def candidates():
    """(name, resize filter, formats, factory) in table order."""
    pil = _pillow_name()
    return [
        (f'{pil} full decode (reference)', 'bicubic', ALL, lambda: pil_full(Image.BICUBIC)),
        (f'{pil} full decode', 'bilinear', ALL, lambda: pil_full(Image.BILINEAR)),
        (f'{pil} draft', 'bicubic', ('jpeg',), lambda: pil_draft(Image.BICUBIC)),
        (f'{pil} draft', 'bilinear', ('jpeg',), lambda: pil_draft(Image.BILINEAR)),
        ('simplejpeg n/8 scale + pillow', 'bicubic', ('jpeg',),
         lambda: simplejpeg_fn(False, Image.BICUBIC)),
        ('simplejpeg n/8 scale + opencv', 'INTER_AREA', ('jpeg',),
         lambda: simplejpeg_fn(False, 'INTER_AREA')),
        ('simplejpeg 1/2^k scale + pillow', 'bicubic', ('jpeg',),
         lambda: simplejpeg_fn(True, Image.BICUBIC)),
        ('simplejpeg 1/2^k scale + pillow', 'bilinear', ('jpeg',),
         lambda: simplejpeg_fn(True, Image.BILINEAR)),
        ('opencv full decode', 'INTER_AREA', ALL, lambda: cv2_fn(False, 'INTER_AREA')),
        ('opencv IMREAD_REDUCED', 'INTER_AREA', ('jpeg',), lambda: cv2_fn(True, 'INTER_AREA')),
        ('opencv IMREAD_REDUCED', 'INTER_LINEAR', ('jpeg',),
         lambda: cv2_fn(True, 'INTER_LINEAR')),
        ('opencv IMREAD_REDUCED', 'INTER_CUBIC', ('jpeg',), lambda: cv2_fn(True, 'INTER_CUBIC')),
        ('pyvips shrink-on-load', 'cubic', ALL, lambda: pyvips_fn('cubic')),
        ('pyvips shrink-on-load', 'linear', ALL, lambda: pyvips_fn('linear')),
        ('imagecodecs full decode + pillow', 'bicubic', ALL,
         lambda: imagecodecs_fn(Image.BICUBIC)),
        ('torchvision decode_image + resized_crop', 'bicubic aa', ALL,
         lambda: torchvision_fn('BICUBIC')),
        ('torchvision decode_image + resized_crop', 'bilinear aa', ALL,
         lambda: torchvision_fn('BILINEAR')),
        ('pyturbojpeg 1/2^k scale + pillow', 'bicubic', ('jpeg',), turbojpeg_fn),
    ]


# --- test images ---------------------------------------------------------------------------

def source_images() -> dict[str, bytes]:
    """scikit-learn's two 640 x 427 photographs, as shipped."""
    import sklearn.datasets
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), 'images')
    out = {}
    for name in ('china.jpg', 'flower.jpg'):
        with open(os.path.join(folder, name), 'rb') as f:
            out[name] = f.read()
    return out


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def image_sets() -> dict[str, list[bytes]]:
    """name -> the two encoded photographs at that size and format."""
    sources = source_images()
    sets = {'jpeg 640x427 (shipped)': list(sources.values())}
    four_three = []
    for data in sources.values():
        im = Image.open(io.BytesIO(data)).convert('RGB')
        w, h = im.size                       # 640 x 427 -> centre 569 x 427 (4:3)
        cw = h * 4 // 3
        im = im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
        im.info = {}                         # no ICC profile in the re-encoded files
        four_three.append(im)

    def resized(size):
        return [im.resize(size, Image.LANCZOS) for im in four_three]

    for size in ((500, 375), (1024, 768), (2048, 1536)):
        sets[f'jpeg {size[0]}x{size[1]}'] = [_encode(im, 'JPEG', quality=90)
                                             for im in resized(size)]
    small = resized((500, 375))
    sets['jpeg 500x375 progressive'] = [_encode(im, 'JPEG', quality=90, progressive=True)
                                        for im in small]
    sets['png 500x375'] = [_encode(im, 'PNG') for im in small]
    sets['webp 500x375'] = [_encode(im, 'WEBP', quality=90) for im in small]
    return sets


def fmt_of(data: bytes) -> str:
    return {b'\xff\xd8': 'jpeg', b'\x89P': 'png', b'RI': 'webp'}[data[:2]]


# --- measurement ---------------------------------------------------------------------------

def run_batch(fn, images: list[bytes], n: int) -> list[np.ndarray]:
    return [fn(images[k % len(images)], random.Random(k)) for k in range(n)]


def time_batch(fn, images: list[bytes], n: int) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) for n images."""
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(n):
        fn(images[k % len(images)], random.Random(k))
    return time.process_time() - cpu, time.perf_counter() - wall


def check(outputs: list[np.ndarray], reference: list[np.ndarray]) -> tuple[str | None, float]:
    """(problem or None, mean absolute difference to the reference on 0-255)."""
    for out in outputs:
        if not isinstance(out, np.ndarray) or out.shape != (SIZE, SIZE, 3) or out.dtype != np.uint8:
            return (f'bad output {getattr(out, "shape", type(out))} '
                    f'{getattr(out, "dtype", "")}'), float('nan')
    diffs = [np.abs(o.astype(np.int16) - r.astype(np.int16)).mean()
             for o, r in zip(outputs, reference)]
    return None, float(np.mean(diffs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=40, help='images per timed round')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--cpu', type=int, default=None,
                        help='pin to this CPU (default: the last one allowed; -1: no pinning)')
    parser.add_argument('--only', default='', help='comma-separated substrings of candidate names')
    parser.add_argument('--reference', default=None,
                        help='.npz of reference outputs: loaded if it exists, else written '
                             '(to compare a second environment, e.g. pillow-simd, to this one)')
    args = parser.parse_args(argv)

    if args.cpu != -1 and hasattr(os, 'sched_setaffinity'):
        cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        print(f'pinned to CPU {cpu}', file=sys.stderr)

    if args.reference and os.path.exists(args.reference):
        # Another environment's images and reference outputs (it needs no scikit-learn or
        # WebP encoder here).
        saved = np.load(args.reference)
        names = [str(x) for x in saved['set_names']]
        sets = {name: [saved[f'img{i}_{j}'].tobytes() for j in range(int(saved[f'count{i}']))]
                for i, name in enumerate(names)}
        reference = {name: list(saved[f'ref{i}']) for i, name in enumerate(names)}
        ref_label = str(saved['label'])
        if len(reference[names[0]]) < args.n:
            parser.error(f'{args.reference} holds outputs for --n {len(reference[names[0]])}')
    else:
        sets = image_sets()
        ref_fn = pil_full(Image.BICUBIC)
        reference = {name: run_batch(ref_fn, imgs, args.n) for name, imgs in sets.items()}
        ref_label = f'{_pillow_name()} full decode, bicubic'
        if args.reference:
            arrays = {'set_names': np.array(list(sets)), 'label': np.array(ref_label)}
            for i, (name, imgs) in enumerate(sets.items()):
                arrays[f'ref{i}'] = np.stack(reference[name])
                arrays[f'count{i}'] = np.array(len(imgs))
                for j, data in enumerate(imgs):
                    arrays[f'img{i}_{j}'] = np.frombuffer(data, np.uint8)
            np.savez_compressed(args.reference, **arrays)

    runnable, unavailable = [], []
    for name, filt, formats, factory in candidates():
        if args.only and not any(s in name for s in args.only.split(',')):
            continue
        try:
            runnable.append((f'{name} [{filt}]', formats, factory()))
        except Exception as e:  # not installed, or its native library is missing
            unavailable.append((f'{name} [{filt}]', f'{type(e).__name__}: {e}'.splitlines()[0][:90]))

    load_start = os.getloadavg()[0]
    results = {}   # (candidate, set) -> (images per CPU second, mad) or str
    walls = []     # wall / CPU time per candidate and set: how much other load took the core
    for set_name, images in sets.items():
        fmt = fmt_of(images[0])
        active = []
        for cname, formats, fn in runnable:
            if fmt not in formats:
                results[cname, set_name] = 'n/a'
                continue
            try:
                outputs = run_batch(fn, images, args.n)   # warm-up, and the outputs to check
            except Exception as e:
                results[cname, set_name] = f'error: {type(e).__name__}'
                continue
            problem, mad = check(outputs, reference[set_name])
            if problem:
                results[cname, set_name] = problem
                continue
            active.append((cname, fn, mad))
        times = {cname: [] for cname, _, _ in active}
        for _ in range(args.rounds):   # rounds interleave the candidates: noise hits all alike
            for cname, fn, _ in active:
                times[cname].append(time_batch(fn, images, args.n))
        for cname, _, mad in active:
            cpu, wall = np.median(np.array(times[cname]), axis=0)
            results[cname, set_name] = (args.n / cpu, mad)
            walls.append(wall / cpu)
        print(f'done {set_name}', file=sys.stderr)
    load_end = os.getloadavg()[0]

    set_names = list(sets)
    print(f'images per CPU second, one core, one thread (median of {args.rounds} rounds of '
          f'{args.n}), (mean |difference| to {ref_label} on 0-255); '
          f'load average {load_start:.2f} -> {load_end:.2f}, wall/CPU time median '
          f'{np.median(walls):.2f} (max {np.max(walls):.2f})')
    sizes = ' | '.join(f'{sum(map(len, sets[s])) // len(sets[s]) // 1024} KB' for s in set_names)
    print(f'| candidate [resize filter] | {" | ".join(set_names)} |')
    print('|---' * (len(set_names) + 1) + '|')
    print(f'| (mean file size) | {sizes} |')
    for cname, _, _ in runnable:
        cells = []
        for s in set_names:
            r = results.get((cname, s), '')
            cells.append(f'{r[0]:,.0f} ({r[1]:.1f})' if isinstance(r, tuple) else r)
        print(f'| {cname} | {" | ".join(cells)} |')
    for cname, why in unavailable:
        print(f'| {cname} | not available: {why} |')


if __name__ == '__main__':
    main()
