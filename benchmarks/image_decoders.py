"""Image decoders for the training input pipeline: decode + random-resized-crop + resize, per core.

Measures what the input pipeline's decoder costs and how far it moves the pixels. Each candidate
turns encoded bytes into a 224 x 224 RGB uint8 array the way a grain worker would, one image at a
time: read the size from the header, draw open_clip's RandomResizedCrop (area 0.9-1.0, aspect
3/4-4/3, torchvision's `get_params`), decode -- at a reduced size where the library can (libjpeg
DCT scaling, keeping the crop at least 224 px a side) -- then crop and resize. Reported per image
set: images per CPU second on one pinned core with every thread pool at one thread (median of
`--rounds` rounds of `--n` images, after a warm-up pass), `xS` the speed-up over the first row taken
round by round (the rounds interleave the candidates, so this ratio is the number to trust on a
busy machine), and in brackets the mean |difference| on 0-255 to the reference: Pillow's full
decode + bicubic resize, which is what open_clip does. A candidate whose output is not
224 x 224 x 3 uint8 is reported as such; one that is not installed is listed as not available.

  python -m benchmarks.image_decoders [--n 40] [--rounds 5] [--only NAME,...] [--cpu N]

Test images: scikit-learn's two 640 x 427 photographs (china.jpg, flower.jpg) as shipped, and the
same centre-cropped to 4:3, resized (LANCZOS) and re-encoded at 500 x 375 (about the ImageNet /
LAION median), 1024 x 768 and 2048 x 1536 as JPEG quality 90 (4:2:0), 500 x 375 as progressive
JPEG, PNG and WebP (q90). The large ones are upscaled, so they carry less detail (smaller files,
less entropy decoding) than real photographs of that size: their DCT-scaling gains are if
anything understated.

Candidates from PyPI: simplejpeg==1.9.0, opencv-python-headless==5.0.0.93,
pyvips[binary]==3.2.0, imagecodecs==2026.3.6 (the newest for Python 3.11), pyturbojpeg==2.6.1
(a pure-Python wrapper that needs the system's libturbojpeg, not installed here), torchvision
(the venv's 0.28.0 is PyPI's CUDA build and does not load next to torch 2.13.0+cpu).
pillow-simd replaces Pillow, so it runs in its own venv, against the same images and reference
outputs:

  python -m benchmarks.image_decoders --reference /tmp/ref.npz    # writes images + reference
  python -m venv /tmp/simdvenv && /tmp/simdvenv/bin/pip install numpy
  CC="cc -mavx2" /tmp/simdvenv/bin/pip install --no-binary pillow-simd pillow-simd==12.1.1.post0
  /tmp/simdvenv/bin/python -m benchmarks.image_decoders --reference /tmp/ref.npz --only pillow

Results: 2-core cloud VM (Intel Xeon, AVX2 + AVX-512), Python 3.11, Pillow 12.3.0
(libjpeg-turbo 3), numpy 2.4.6, measured while other jobs kept the load at 2-3 (CPU time, not
wall time, for that reason; absolute rates still move +-25% between runs, the xS ratios about
+-10%). The pillow-simd rows (built with -mavx2 against Debian's libjpeg-turbo 2.1.5, no WebP)
come from the second venv run right after, so their xS is over pillow-simd's own full decode:

| candidate [resize filter] | jpeg 640x427 (shipped) | jpeg 500x375 | jpeg 1024x768 | jpeg 2048x1536 | jpeg 500x375 progressive | png 500x375 | webp 500x375 |
|---|---|---|---|---|---|---|---|
| (mean file size) | 165 KB | 50 KB | 153 KB | 405 KB | 47 KB | 291 KB | 42 KB |
| pillow 12.3.0 full decode (reference) [bicubic] | 125 ×1.0 (0.0) | 278 ×1.0 (0.0) | 103 ×1.0 (0.0) | 27 ×1.0 (0.0) | 129 ×1.0 (0.0) | 80 ×1.0 (0.0) | 128 ×1.0 (0.0) |
| pillow 12.3.0 full decode [bilinear] | 162 ×1.2 (1.1) | 337 ×1.3 (1.1) | 115 ×1.4 (1.1) | 37 ×1.4 (1.1) | 157 ×1.2 (1.1) | 89 ×1.1 (1.1) | 149 ×1.1 (1.1) |
| pillow 12.3.0 draft [bicubic] | 146 ×1.0 (0.0) | 273 ×1.0 (0.0) | 179 ×1.9 (0.5) | 100 ×3.8 (0.5) | 133 ×1.0 (0.0) | n/a | n/a |
| pillow 12.3.0 draft [bilinear] | 232 ×1.3 (1.1) | 351 ×1.3 (1.1) | 228 ×2.2 (1.3) | 118 ×4.3 (1.4) | 165 ×1.2 (1.1) | n/a | n/a |
| simplejpeg n/8 scale + pillow [bicubic] | 189 ×1.3 (0.8) | 423 ×1.5 (1.3) | 246 ×2.3 (0.7) | 101 ×3.8 (0.5) | 164 ×1.3 (1.3) | n/a | n/a |
| simplejpeg n/8 scale + opencv [INTER_AREA] | 233 ×1.6 (2.2) | 544 ×1.8 (2.8) | 297 ×2.9 (1.9) | 122 ×4.6 (1.6) | 197 ×1.5 (2.8) | n/a | n/a |
| simplejpeg 1/2^k scale + pillow [bicubic] | 133 ×1.1 (0.0) | 275 ×1.0 (0.0) | 211 ×2.0 (0.5) | 98 ×4.1 (0.5) | 135 ×1.0 (0.0) | n/a | n/a |
| simplejpeg 1/2^k scale + pillow [bilinear] | 180 ×1.2 (1.1) | 392 ×1.5 (1.1) | 253 ×2.5 (1.3) | 108 ×4.2 (1.4) | 158 ×1.2 (1.1) | n/a | n/a |
| opencv full decode [INTER_AREA] | 246 ×1.5 (1.0) | 436 ×1.6 (1.0) | 155 ×1.5 (1.1) | 43 ×1.7 (1.1) | 181 ×1.4 (1.0) | 104 ×1.3 (1.0) | 169 ×1.3 (0.9) |
| opencv IMREAD_REDUCED [INTER_AREA] | 218 ×1.4 (1.0) | 409 ×1.6 (1.0) | 261 ×2.5 (1.8) | 120 ×4.5 (1.6) | 174 ×1.3 (1.0) | n/a | n/a |
| opencv IMREAD_REDUCED [INTER_LINEAR] | 346 ×2.1 (3.4) | 739 ×2.9 (2.5) | 353 ×3.4 (2.9) | 137 ×5.1 (2.6) | 240 ×1.9 (2.5) | n/a | n/a |
| opencv IMREAD_REDUCED [INTER_CUBIC] | 343 ×2.0 (4.9) | 740 ×2.4 (3.8) | 356 ×3.5 (4.0) | 129 ×5.1 (3.7) | 239 ×1.9 (3.8) | n/a | n/a |
| pyvips shrink-on-load [cubic] | 177 ×1.0 (0.2) | 252 ×0.8 (0.2) | 181 ×1.8 (1.4) | 93 ×3.8 (1.3) | 125 ×0.9 (0.2) | 113 ×1.5 (0.2) | 79 ×0.6 (0.1) |
| pyvips shrink-on-load [linear] | 176 ×1.0 (1.2) | 256 ×0.9 (1.2) | 192 ×1.9 (1.9) | 95 ×3.6 (1.8) | 138 ×1.0 (1.2) | 132 ×1.5 (1.2) | 81 ×0.6 (1.1) |
| imagecodecs full decode + pillow [bicubic] | 181 ×1.0 (0.0) | 305 ×1.0 (0.0) | 85 ×0.9 (0.0) | 24 ×1.0 (0.0) | 157 ×1.0 (0.0) | 110 ×1.3 (0.0) | 130 ×1.0 (0.0) |
| pillow-simd 12.1.1.post0 full decode (reference) [bicubic] | 292 ×1.0 (0.0) | 416 ×1.0 (0.0) | 158 ×1.0 (0.0) | 49 ×1.0 (0.0) | 286 ×1.0 (0.0) | 130 ×1.0 (0.0) | error: built without WebP |
| pillow-simd 12.1.1.post0 full decode [bilinear] | 299 ×1.0 (1.1) | 443 ×1.1 (1.1) | 169 ×1.1 (1.1) | 56 ×1.1 (1.1) | 305 ×1.0 (1.1) | 131 ×1.0 (1.1) | error: built without WebP |
| pillow-simd 12.1.1.post0 draft [bicubic] | 275 ×1.0 (0.0) | 411 ×1.0 (0.0) | 225 ×1.4 (0.5) | 126 ×2.3 (0.5) | 300 ×1.0 (0.0) | n/a | n/a |
| pillow-simd 12.1.1.post0 draft [bilinear] | 220 ×1.0 (1.1) | 442 ×1.1 (1.1) | 236 ×1.5 (1.3) | 114 ×2.3 (1.4) | 327 ×1.1 (1.1) | n/a | n/a |
| torchvision decode_image + resized_crop [bicubic aa] | not available: RuntimeError: operator torchvision::nms does not exist |
| torchvision decode_image + resized_crop [bilinear aa] | not available: RuntimeError: operator torchvision::nms does not exist |
| pyturbojpeg 1/2^k scale + pillow [bicubic] | not available: RuntimeError: Unable to locate turbojpeg library automatically (no system libturbojpeg) |

Conclusions:
- Quality: every candidate is within 5/255 of the reference; the antialiased ones within 2.8,
  against 1.1 for merely switching Pillow from bicubic to bilinear. OpenCV INTER_LINEAR /
  INTER_CUBIC do not antialias a downscale (2.5-4.9, aliasing) -- fast, but not what open_clip
  trains on. pillow-simd is bit-identical to Pillow here (0.0).
- At web sizes (<= 640 px) a 0.9-1.0-area crop is 355-427 px on its short side, so the 1/2, 1/4,
  1/8 DCT scales (Pillow's draft, OpenCV's IMREAD_REDUCED) never apply: Pillow's draft is the
  full decode there. What helps is a cheaper resize (OpenCV INTER_AREA, pillow-simd's AVX2) and
  libjpeg-turbo's n/8 scales, which only simplejpeg exposes. From 1024 px up DCT scaling gives
  2-5x and every scaling candidate gets most of it.
- JPEG: simplejpeg n/8 + cv2.resize INTER_AREA is the fastest antialiased path at every size
  (x1.5-1.8 at <= 640 px, x2.9-4.6 at 1024-2048). simplejpeg + Pillow bicubic keeps closer to
  the reference (<= 1.3) at x1.3-1.5 / x2.3-3.8 with a 1 MB dependency instead of OpenCV's
  150 MB. Pillow's draft alone: x1.0 / x1.9-3.8, no new dependency.
- PNG: OpenCV, imagecodecs and pyvips x1.0-1.5 over Pillow, varying between runs (zlib inflate
  dominates). WebP: OpenCV x1.3-1.4; pyvips slower than Pillow. pyvips is never ahead of
  Pillow's draft on JPEG and brings libvips' threads into forked workers; imagecodecs decodes
  no faster than Pillow's own libjpeg-turbo.
- pillow-simd (AVX2 resampling) runs 1.5-2.3x Pillow 12.3.0 at <= 640 px in these back-to-back
  runs, about the OpenCV paths' speed, without touching the pipeline's code; but it is an sdist
  that needs a compiler, -mavx2 and the image libraries' headers (no WebP without
  libwebp-dev), and any package that requires `pillow` reinstalls Pillow over it.
- For mmjax/data/images.py: JPEGs through simplejpeg's n/8 decode and Pillow's bicubic resize
  (one 1 MB dependency, closest to open_clip); PNG, WebP and whatever simplejpeg rejects through
  Pillow as before (which also composites transparency onto white; cv2.imdecode drops alpha).
  OpenCV's INTER_AREA would add about 20% more on JPEG for 150 MB and a softer filter.
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
            why = f'{type(e).__name__}: {e}'.splitlines()[0][:90]
            unavailable.append((f'{name} [{filt}]', why))

    load_start = os.getloadavg()[0]
    results = {}   # (candidate, set) -> (images per CPU second, speed-up, mad) or str
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
        ref_cpu = np.array([t[0] for t in times[active[0][0]]]) if active else None
        for cname, _, mad in active:
            cpu, wall = np.median(np.array(times[cname]), axis=0)
            # speed-up over the first candidate (the reference) in the same rounds
            ratio = float(np.median(ref_cpu / np.array([t[0] for t in times[cname]])))
            results[cname, set_name] = (args.n / cpu, ratio, mad)
            walls.append(wall / cpu)
        print(f'done {set_name}', file=sys.stderr)
    load_end = os.getloadavg()[0]

    set_names = list(sets)
    print(f'images per CPU second, one core, one thread (median of {args.rounds} rounds of '
          f'{args.n}), ×speed-up over the first row (median of per-round ratios), '
          f'(mean |difference| to {ref_label} on 0-255); '
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
            cells.append(f'{r[0]:,.0f} ×{r[1]:.1f} ({r[2]:.1f})' if isinstance(r, tuple) else r)
        print(f'| {cname} | {" | ".join(cells)} |')
    for cname, why in unavailable:
        print(f'| {cname} | not available: {why} |')


if __name__ == '__main__':
    main()
