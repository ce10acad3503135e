"""Tests of `mmjax data build --kind imagenet | karpathy`: evaluation benchmarks from local files."""

import io
import json
import os
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax.data import build, sources
from mmjax.data.build import detect, imagenet, store

NUM_IMAGES = 20
# Hand-checked ImageNet-1k facts (torchvision / tfds order): index, wnid, CLIP's name.
KNOWN_CLASSES = ((0, 'n01440764', 'tench'), (1, 'n01443537', 'goldfish'),
                 (281, 'n02123045', 'tabby cat'), (999, 'n15075141', 'toilet paper'))


def _color(number: int) -> tuple[int, int, int]:
    return (12 * number % 256, 255 - 11 * number % 256, 90 + 7 * number % 160)


def _jpeg(number: int, size=(40, 30)) -> bytes:
    """A solid-colour JPEG whose colour tells `number` back (see _number_of)."""
    out = io.BytesIO()
    Image.new('RGB', size, _color(number)).save(out, format='JPEG', quality=95)
    return out.getvalue()


def _number_of(data: bytes, candidates) -> int:
    """Which image the encoded bytes are (decodes them with PIL: they must be a whole image)."""
    pixel = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'), dtype=np.int64)[5, 5]
    return min(candidates, key=lambda n: np.abs(pixel - _color(n)).sum())


def _records(data_dir, name, split):
    """The split's records the way training and evaluation read them."""
    source = sources.get(name, data_dir).source(data_dir, split)
    return [source[i] for i in range(len(source))]


def _val_name(number: int) -> str:
    return f'ILSVRC2012_val_{number:08d}.JPEG'


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def imagenet_files(tmp_path_factory):
    """ILSVRC2012_img_val.tar (20 images), the same images in a folder, and the 20 wnids."""
    root = tmp_path_factory.mktemp('imagenet')
    wnids = imagenet.wnids()
    labels = [wnids[(n * 53) % 1000] for n in range(1, NUM_IMAGES + 1)]  # Image n: labels[n - 1].
    folder = root / 'val'
    folder.mkdir()
    with tarfile.open(root / 'ILSVRC2012_img_val.tar', 'w') as tar:
        for n in range(1, NUM_IMAGES + 1):
            _add(tar, _val_name(n), _jpeg(n))
            (folder / _val_name(n)).write_bytes(_jpeg(n))
    (root / 'labels.txt').write_text(''.join(w + '\n' for w in labels))
    return root, labels


def test_imagenet_from_tar_with_wnid_lines(tmp_path, imagenet_files):
    root, labels = imagenet_files
    summary = build.build(str(root / 'ILSVRC2012_img_val.tar'), 'imagenet_val', tmp_path, workers=1,
                          labels=str(root / 'labels.txt'))  # Kind detected from the member names.
    assert summary['kind'] == 'imagenet' and summary['splits'] == {'validation': NUM_IMAGES}
    assert summary['skipped'] == {} and summary['num_classes'] == 1000
    wnids = imagenet.wnids()
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    seen = []
    for record in _records(tmp_path, 'imagenet_val', 'validation'):
        number = _number_of(record['image'], range(1, NUM_IMAGES + 1))
        assert wnids[record['label']] == labels[number - 1]
        seen.append(number)
    assert seen == list(range(1, NUM_IMAGES + 1))  # Tar order, each image once.
    info = build.read_info(tmp_path, 'imagenet_val')
    assert info['features'] == ('image', 'label') and len(info['class_names']) == 1000
    builder = tfds.builder_from_directory(info['path'])
    assert builder.info.features['label'].names == wnids  # Unique ids as ClassLabel names.
    for index, wnid, name in KNOWN_CLASSES:
        assert wnids[index] == wnid and info['class_names'][index] == name
    with open(os.path.join(info['path'], store.BUILD_FILE)) as f:
        assert json.load(f)['class_names'] == imagenet.class_names()


def test_imagenet_from_folder_with_kaggle_csv(tmp_path, imagenet_files):
    root, _ = imagenet_files
    wnids = imagenet.wnids()
    rows = [(n, wnids[(7 * n) % 1000]) for n in range(NUM_IMAGES, 0, -1)]  # Out of order.
    (root / 'LOC_val_solution.csv').write_text(
        'ImageId,PredictionString\n' + ''.join(
            f'ILSVRC2012_val_{n:08d},{w} 1 2 30 20 {wnids[0]} 3 4 10 10 \n' for n, w in rows))
    assert detect.resolve(str(root / 'val'), None, {}) == ('imagenet', [str(root / 'val')])
    summary = build.build(str(root / 'val'), 'imagenet_csv', tmp_path, workers=1,
                          labels=str(root / 'LOC_val_solution.csv'))
    assert summary['splits'] == {'validation': NUM_IMAGES}
    expected = dict(rows)
    for record in _records(tmp_path, 'imagenet_csv', 'validation'):
        number = _number_of(record['image'], range(1, NUM_IMAGES + 1))
        assert wnids[record['label']] == expected[number]  # The first box's wnid.


def test_imagenet_default_labels_and_incomplete_sets(tmp_path, imagenet_files):
    """Without --labels: tfds' validation_labels.txt (50,000 lines); the 49,980 labelled images
    the folder lacks are bad records (an incomplete benchmark), counted as missing_file."""
    root, _ = imagenet_files
    with pytest.raises(build.BuildError, match=r'49980 of 50000 .*missing_file'):
        build.build(str(root / 'val'), 'partial', tmp_path, workers=1)
    summary = build.build(str(root / 'val'), 'partial', tmp_path, workers=1, max_bad_fraction=1)
    assert summary['skipped'] == {'missing_file': 50000 - NUM_IMAGES}
    with open(imagenet.labels_file(None)) as f:
        shipped = [next(f).strip() for _ in range(NUM_IMAGES)]
    assert shipped[0] == 'n01751748'  # tfds' file: image 1 is a sea snake.
    wnids = imagenet.wnids()
    for record in _records(tmp_path, 'partial', 'validation'):
        number = _number_of(record['image'], range(1, NUM_IMAGES + 1))
        assert wnids[record['label']] == shipped[number - 1]


def test_imagenet_labels_files_that_are_refused(tmp_path, imagenet_files):
    root, labels = imagenet_files
    tar = str(root / 'ILSVRC2012_img_val.tar')
    devkit = tmp_path / 'ILSVRC2012_validation_ground_truth.txt'
    devkit.write_text('490\n361\n171\n')
    with pytest.raises(build.BuildError, match=r'devkit.*not supported.*LOC_val_solution.csv'):
        build.build(tar, 'bad', tmp_path, workers=1, labels=str(devkit))
    unknown = tmp_path / 'unknown.txt'
    unknown.write_text('n00000001\n' * NUM_IMAGES)
    with pytest.raises(build.BuildError, match='not ImageNet-1k classes'):
        build.build(tar, 'bad', tmp_path, workers=1, labels=str(unknown))
    with pytest.raises(build.BuildError, match='does not exist'):
        build.build(tar, 'bad', tmp_path, workers=1, labels=str(tmp_path / 'none.txt'))
    assert not os.path.exists(tmp_path / 'bad')
    # The labels file is part of the fingerprint: other labels need --overwrite.
    build.build(tar, 'val', tmp_path, workers=1, labels=str(root / 'labels.txt'))
    other = tmp_path / 'other.txt'
    other.write_text(''.join(w + '\n' for w in reversed(labels)))
    with pytest.raises(build.BuildError, match='another source'):
        build.build(tar, 'val', tmp_path, workers=1, labels=str(other))


def _coco_json(path, images) -> str:
    entries = [{'filepath': fp, 'filename': fn, 'split': split, 'cocoid': i, 'imgid': i,
                'sentences': [{'raw': c, 'tokens': c.split()} for c in caps]}
               for i, (fp, fn, split, caps) in enumerate(images)]
    path.write_text(json.dumps({'images': entries, 'dataset': 'coco'}))
    return str(path)


COCO = [  # filepath, filename, Karpathy split, captions; image i is _jpeg(i).
    ('val2014', 'COCO_val2014_000000000000.jpg', 'test',
     ['  A man riding a horse. ', 'A rider\non a brown\r\nhorse.', 'Horse and man.']),
    ('val2014', 'COCO_val2014_000000000001.jpg', 'val', ['A red bus.', 'A bus on a street.']),
    ('train2014', 'COCO_train2014_000000000002.jpg', 'train', ['Not in val2014.zip.']),
    ('val2014', 'COCO_val2014_000000000003.jpg', 'restval', ['Two cats.', '', 'Cats asleep.']),
    ('val2014', 'COCO_val2014_000000000004.jpg', 'test', ['A plate of food.']),
    ('train2014', 'COCO_train2014_000000000005.jpg', 'train', ['Found by its file name.']),
]
EXPECTED = {0: 'A man riding a horse.\nA rider on a brown horse.\nHorse and man.',
            1: 'A red bus.\nA bus on a street.', 3: 'Two cats.\nCats asleep.',
            4: 'A plate of food.', 5: 'Found by its file name.'}


def _coco_zip(path, skip=()) -> str:
    with zipfile.ZipFile(path, 'w') as archive:
        for i, (folder, name, _, _) in enumerate(COCO):
            if folder == 'val2014' and i not in skip:
                archive.writestr(f'val2014/{name}', _jpeg(i))
        archive.writestr(f'elsewhere/{COCO[5][1]}', _jpeg(5))  # Matched by file name alone.
        archive.writestr('val2014/README.txt', 'not an image')
    return str(path)


def _captions_by_image(data_dir, name, split) -> dict[int, str]:
    found = {}
    for record in _records(data_dir, name, split):
        number = _number_of(record['image'], range(len(COCO)))
        assert number not in found  # One record per image.
        found[number] = record['captions'].decode('utf-8')
    return found


def test_coco_karpathy_from_val2014_zip(tmp_path):
    source = _coco_json(tmp_path / 'dataset_coco.json', COCO)
    images = _coco_zip(tmp_path / 'val2014.zip')
    summary = build.build(source, 'coco', tmp_path / 'data', workers=1, images=images)
    assert summary['kind'] == 'karpathy' and summary['skipped'] == {}  # Kind detected.
    assert summary['splits'] == {'test': 2, 'train': 2, 'validation': 1}
    assert summary['train_images_not_found'] == 1 and summary['examples'] == 5
    assert summary['features'] == ['image', 'captions']
    by_split = {s: _captions_by_image(tmp_path / 'data', 'coco', s)
                for s in ('test', 'validation', 'train')}
    assert by_split == {'test': {0: EXPECTED[0], 4: EXPECTED[4]}, 'validation': {1: EXPECTED[1]},
                        'train': {3: EXPECTED[3], 5: EXPECTED[5]}}
    first = _records(tmp_path / 'data', 'coco', 'test')[0]
    assert _number_of(first['image'], range(len(COCO))) == 0  # The JSON's order.
    # The --images files are part of the fingerprint.
    assert build.build(source, 'coco', tmp_path / 'data', workers=1, images=images) == summary
    with zipfile.ZipFile(images, 'a') as archive:
        archive.writestr('val2014/extra.jpg', _jpeg(9))
    with pytest.raises(build.BuildError, match='another source'):
        build.build(source, 'coco', tmp_path / 'data', workers=1, images=images)


def test_missing_test_image_is_a_bad_record(tmp_path):
    source = _coco_json(tmp_path / 'dataset_coco.json', COCO)
    images = _coco_zip(tmp_path / 'val2014.zip', skip=(4,))
    with pytest.raises(build.BuildError, match=r'1 of 5 records are bad.*missing_file.*000000004'):
        build.build(source, 'coco', tmp_path, workers=1, images=images)
    summary = build.build(source, 'coco', tmp_path, workers=1, images=images,
                          max_bad_fraction=0.5)
    assert summary['skipped'] == {'missing_file': 1}
    assert summary['splits'] == {'test': 1, 'train': 2, 'validation': 1}


def test_flickr30k_karpathy_from_tar_and_folder(tmp_path):
    flickr = [(f'{1000 + i}.jpg', split, [f'Caption {c} of image {i}.' for c in range(5)])
              for i, split in enumerate(['train', 'val', 'test', 'test'])]
    entries = [{'filename': fn, 'split': split, 'imgid': i, 'sentences': [{'raw': c} for c in caps]}
               for i, (fn, split, caps) in enumerate(flickr)]
    source = tmp_path / 'dataset_flickr30k.json'
    source.write_text(json.dumps({'images': entries, 'dataset': 'flickr30k'}))
    folder = tmp_path / 'flickr30k-images'
    folder.mkdir()
    with tarfile.open(tmp_path / 'flickr30k-images.tar', 'w') as tar:
        for i, (name, _, _) in enumerate(flickr):
            _add(tar, f'./flickr30k-images/{name}', _jpeg(i))
            (folder / name).write_bytes(_jpeg(i))
    for images, name in ((tmp_path / 'flickr30k-images.tar', 'flickr_tar'), (folder, 'flickr_dir')):
        summary = build.build(str(source), name, tmp_path / 'data', kind='karpathy', workers=1,
                              images=str(images), max_side=16)
        assert summary['splits'] == {'test': 2, 'train': 1, 'validation': 1}
        assert summary['train_images_not_found'] == 0 and summary['skipped'] == {}
        test = _records(tmp_path / 'data', name, 'test')
        assert [r['captions'].decode().split('\n') for r in test] == [flickr[2][2], flickr[3][2]]
        assert [_number_of(r['image'], range(4)) for r in test] == [2, 3]
        assert max(Image.open(io.BytesIO(test[0]['image'])).size) == 16  # --max_side applies.


def test_karpathy_input_errors(tmp_path):
    source = _coco_json(tmp_path / 'dataset_coco.json', COCO)
    images = _coco_zip(tmp_path / 'val2014.zip')
    cases = [
        (dict(source=source), '--kind karpathy needs --images'),
        (dict(source=source, images=str(tmp_path / 'none.zip')), r'--images .*none.zip does not'),
        (dict(source=str(tmp_path / 'none.json'), images=images), 'does not exist'),
        (dict(source=str(tmp_path), images=images, kind='karpathy'), 'not the folder'),
        (dict(source=source, images=images, kind='table'), '--images is for --kind karpathy'),
        (dict(source=source, images=images, labels=source), '--labels is for --kind imagenet'),
    ]
    (tmp_path / 'broken.zip').write_bytes(b'PK\x03\x04 this is not a zip')
    cases.append((dict(source=source, images=str(tmp_path / 'broken.zip')), 'cannot read .* as a zip'))
    with tarfile.open(tmp_path / 'images.tar.gz', 'w:gz') as tar:
        _add(tar, COCO[0][1], _jpeg(0))
    cases.append((dict(source=source, images=str(tmp_path / 'images.tar.gz')), 'unpack it'))
    (tmp_path / 'dataset_x.json').write_text(json.dumps({'annotations': []}))
    cases.append((dict(source=str(tmp_path / 'dataset_x.json'), images=images), 'no "images" list'))
    (tmp_path / 'dataset_y.json').write_text('{"images": [')
    cases.append((dict(source=str(tmp_path / 'dataset_y.json'), images=images), 'is not JSON'))
    bad_split = [('val2014', COCO[0][1], 'dev', ['x'])]
    cases.append((dict(source=_coco_json(tmp_path / 'dataset_z.json', bad_split), images=images),
                  r"split 'dev'"))
    for kwargs, message in cases:
        with pytest.raises(build.BuildError, match=message):
            build.build(name='bad', data_dir=tmp_path / 'data', workers=1, **kwargs)
    assert build.list_built(tmp_path / 'data') == []


def test_cli_takes_labels_and_images(tmp_path, imagenet_files, capsys):
    from mmjax import cli
    root, _ = imagenet_files
    source = _coco_json(tmp_path / 'dataset_coco.json', COCO)
    images = _coco_zip(tmp_path / 'val2014.zip')
    common = ['--data_dir', str(tmp_path), '--workers', '1']
    assert cli.main(['data', 'build', source, '--name', 'coco', '--kind', 'karpathy',
                     '--images', f'{images},{root / "val"}'] + common) == 0
    assert json.loads(capsys.readouterr().out)['splits']['test'] == 2
    assert cli.main(['data', 'build', str(root / 'val'), '--name', 'inet', '--kind', 'imagenet',
                     '--labels', str(root / 'labels.txt')] + common) == 0
    assert json.loads(capsys.readouterr().out)['splits'] == {'validation': NUM_IMAGES}
    assert cli.main(['data', 'build', source, '--name', 'x', '--kind', 'imagenet'] + common) == 2
    assert capsys.readouterr().err.count('\n') == 1  # One line.
