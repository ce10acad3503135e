"""Reads ImageNet-1k validation (ILSVRC2012_img_val.tar or its folder) with labels from a file."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import tarfile
from importlib import resources
from typing import Iterator

from mmjax.data.build.detect import IMAGENET_VAL_FILE, ONE_INPUT
from mmjax.data.build.records import IMAGE_LABEL, BuildError, Item, Skip, Source

SPLIT = 'validation'
NUM_CLASSES = 1000
CLASS_NAMES_FILE = 'imagenet_class_names.txt'   # In mmjax/data/assets: CLIP's prompt names.
TFDS_FOLDER = ('datasets', 'imagenet2012')      # tensorflow-datasets' labels.txt and
TFDS_VALIDATION_LABELS = 'validation_labels.txt'  # validation_labels.txt live here.
ACCEPTED = ('one WordNet id per line in image order (tensorflow-datasets\' validation_labels.txt, '
            'the default) or Kaggle\'s LOC_val_solution.csv (ImageId,PredictionString)')
_WNID = re.compile(r'^n\d{8}$')


def _tfds_file(name: str) -> str:
    """A file of tensorflow-datasets' imagenet2012 folder, found without importing tfds."""
    spec = importlib.util.find_spec('tensorflow_datasets')
    path = os.path.join(list(spec.submodule_search_locations)[0], *TFDS_FOLDER, name) if spec else ''
    if not os.path.isfile(path):
        raise BuildError(f'tensorflow-datasets\' imagenet2012/{name} is not installed; reinstall '
                         'tensorflow-datasets (or pass --labels)')
    return path


def labels_file(labels: str | None) -> str:
    """The labels file to read: --labels, else tensorflow-datasets' validation_labels.txt."""
    if labels is None:
        return _tfds_file(TFDS_VALIDATION_LABELS)
    path = os.path.abspath(os.path.expanduser(labels))
    if not os.path.isfile(path):
        raise BuildError(f'--labels {labels!r} does not exist; pass a file of {ACCEPTED}')
    return path


def wnids() -> list[str]:
    """The 1000 WordNet ids in sorted order: label i is wnids()[i] (tfds, torchvision, open_clip)."""
    with open(_tfds_file('labels.txt'), encoding='utf-8') as f:
        ids = [line.strip() for line in f if line.strip()]
    if len(ids) != NUM_CLASSES or ids != sorted(set(ids)):
        raise BuildError('tensorflow-datasets\' imagenet2012/labels.txt is not 1000 sorted WordNet '
                         'ids; reinstall tensorflow-datasets')
    return ids


def class_names() -> list[str]:
    """CLIP's readable names of the 1000 classes in wnids() order (the asset's # lines skipped)."""
    text = resources.files('mmjax.data').joinpath('assets', CLASS_NAMES_FILE).read_text('utf-8')
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith('#')]
    assert len(names) == NUM_CLASSES, f'{CLASS_NAMES_FILE} holds {len(names)} names'
    return names


def _rejected(path: str, first: str) -> BuildError:
    if first.isdigit():
        return BuildError(f'--labels {path} holds numbers: the devkit\'s ILSVRC2012_validation_ground_'
                          f'truth.txt (ILSVRC ids, which need its meta.mat) is not supported; pass '
                          f'{ACCEPTED}')
    return BuildError(f'--labels {path} starts with {first[:60]!r}, not a format read here; pass '
                      f'{ACCEPTED}')


def _loc_solution(path: str, f) -> dict[int, str]:
    """Kaggle's LOC_val_solution.csv after its header: ImageId, then boxes 'wnid x0 y0 x1 y1 ...'
    (the first box's wnid is the image's class)."""
    labels = {}
    for row, cells in enumerate(csv.reader(f), start=2):
        if not cells:
            continue
        match = IMAGENET_VAL_FILE.match(f'{cells[0].strip()}.JPEG')
        tokens = cells[1].split() if len(cells) > 1 else []
        if not match or not tokens:
            raise BuildError(f'--labels {path} row {row} is not "ILSVRC2012_val_NNNNNNNN,WNID ..."; '
                             'fix the file')
        labels[int(match.group(1))] = tokens[0]
    return labels


def read_labels(path: str) -> dict[int, str]:
    """{image number (1-based, as in its file name): wnid} from a labels file of an accepted format."""
    with open(path, encoding='utf-8-sig', errors='replace', newline='') as f:
        first = f.readline().strip()
        if not first:
            raise BuildError(f'--labels {path} is empty (or starts with a blank line); pass '
                             f'{ACCEPTED}')
        if first.replace(' ', '') == 'ImageId,PredictionString':
            return _loc_solution(path, f)
        if not _WNID.match(first):
            raise _rejected(path, first)
        lines = [first] + [line.strip() for line in f]
    while lines and not lines[-1]:
        lines.pop()
    bad = next((n for n, line in enumerate(lines, start=1) if not _WNID.match(line)), None)
    if bad is not None:
        raise BuildError(f'--labels {path} line {bad} is {lines[bad - 1][:60]!r}, not a WordNet id '
                         '(n + 8 digits); fix the file')
    return dict(enumerate(lines, start=1))


def _label_indices(path: str, labels: dict[int, str]) -> dict[int, int]:
    """{image number: class index}; a wnid not among the 1000 is an error."""
    index = {wnid: i for i, wnid in enumerate(wnids())}
    unknown = sorted(set(labels.values()) - set(index))
    if unknown:
        raise BuildError(f'--labels {path} names {len(unknown)} WordNet ids that are not ImageNet-1k '
                         f'classes (e.g. {unknown[0]}); pass {ACCEPTED}')
    return {number: index[wnid] for number, wnid in labels.items()}


def _item(name: str, labels: dict[int, int], seen: set, **image) -> Item | Skip:
    """The image's record (its number joins `seen`), or why it has none."""
    match = IMAGENET_VAL_FILE.match(name)
    if not match:
        return Skip(name, 'not_imagenet_file')
    number = int(match.group(1))
    seen.add(number)
    if number not in labels:
        return Skip(name, 'missing_label')
    return Item(key=name, where=name, split=SPLIT, label=labels[number], **image)


def _tar_items(path: str, labels: dict[int, int], seen: set) -> Iterator[Item | Skip]:
    """The tar's images in tar order; a tar cut short ends with one truncated_tar."""
    last = None
    try:
        with tarfile.open(path, mode='r|*') as tar:
            for member in tar:
                if member.isfile():
                    name = os.path.basename(member.name)
                    data = tar.extractfile(member).read()
                    last = name
                    yield _item(name, labels, seen, image_bytes=data)
    except (tarfile.TarError, EOFError, OSError):
        yield Skip(f'{os.path.basename(path)} after {last or "(start)"}', 'truncated_tar')


def _folder_images(folder: str) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if IMAGENET_VAL_FILE.match(n))
    if not names:
        raise BuildError(f'{folder} holds no ILSVRC2012_val_*.JPEG files; pass '
                         f'{ONE_INPUT["imagenet"]}')
    return names


def _folder_items(folder: str, names: list[str], labels: dict[int, int],
                  seen: set) -> Iterator[Item]:
    for name in names:
        yield _item(name, labels, seen, image_path=os.path.join(folder, name))


def _missing(labels: dict[int, int], seen: set) -> Iterator[Skip]:
    """A labelled image that SOURCE lacks is a bad record: the benchmark would be incomplete."""
    for number in sorted(set(labels) - seen):
        yield Skip(f'ILSVRC2012_val_{number:08d}.JPEG', 'missing_file')


def read(inputs: list[str], columns: dict, labels: str) -> Source:
    """Every validation image with its class index (the position of its wnid among the sorted
    1000); ClassLabel names are the wnids, display names CLIP's."""
    if any(columns.get(c) for c in ('image_column', 'caption_column', 'split_column')):
        raise BuildError('ImageNet has no columns: drop --image_column / --caption_column / '
                         '--split_column')
    indices = _label_indices(labels, read_labels(labels))
    source, seen = inputs[0], set()
    names = _folder_images(source) if os.path.isdir(source) else None
    if names is None and not tarfile.is_tarfile(source):
        raise BuildError(f'{source} is not a tar; pass {ONE_INPUT["imagenet"]}')

    def items() -> Iterator[Item | Skip]:
        if names is not None:
            yield from _folder_items(source, names, indices, seen)
        else:
            yield from _tar_items(source, indices, seen)
        yield from _missing(indices, seen)
    return Source(features=IMAGE_LABEL, items=items(), class_names=wnids(),
                  display_names=class_names(), has_splits=True, total=len(indices))
