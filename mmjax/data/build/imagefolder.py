"""Reads an ImageFolder tree (root/CLASS/*.jpg), optionally split as root/train|val|test/CLASS/."""

from __future__ import annotations

import os

from mmjax.data.build.detect import IMAGE_SUFFIXES, has_class_folders
from mmjax.data.build.records import IMAGE_LABEL, BuildError, Item, Source

SPLIT_FOLDERS = {'train': 'train', 'val': 'validation', 'validation': 'validation', 'test': 'test'}


def _visible(names):
    return sorted(n for n in names if not n.startswith('.'))


def _subfolders(folder: str) -> list[str]:
    return [n for n in _visible(os.listdir(folder)) if os.path.isdir(os.path.join(folder, n))]


def _images(folder: str) -> list[str]:
    """Image files under `folder` at any depth, as sorted paths relative to it."""
    found = []
    for here, subfolders, names in os.walk(folder):
        subfolders[:] = _visible(subfolders)
        found += [os.path.relpath(os.path.join(here, n), folder)
                  for n in _visible(names) if n.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def split_folders(root: str) -> dict[str, str]:
    """{split: folder} when root holds train/ and val|validation|test/ (each an ImageFolder), else {}."""
    names = _subfolders(root)
    if 'train' not in names or not set(names) <= set(SPLIT_FOLDERS):
        return {}
    if not all(has_class_folders(os.path.join(root, n)) for n in names):
        return {}  # root/train/*.jpg: 'train' is a class.
    splits = [SPLIT_FOLDERS[n] for n in names]
    if len(set(splits)) < len(splits):
        raise BuildError(f'{root} holds both val/ and validation/; merge them into one split folder')
    return {SPLIT_FOLDERS[n]: os.path.join(root, n) for n in names}


def read(inputs: list[str], columns: dict) -> Source:
    """Every image with the index of its class (class names: the sorted class folder names)."""
    if any(columns.get(c) for c in ('image_column', 'caption_column', 'split_column')):
        raise BuildError('an image folder has no columns: drop --image_column / --caption_column / '
                         '--split_column')
    root = inputs[0]
    splits = split_folders(root)
    folders = splits or {None: root}
    classes = {split: _subfolders(folder) for split, folder in folders.items()}
    class_names = sorted(set().union(*classes.values()))
    if not class_names:
        raise BuildError(f'{root} holds no class folders; an image folder is root/CLASS/*.jpg')
    class_folders = [(split, name, os.path.join(folders[split], name))
                     for split in folders for name in classes[split]]
    listed = [(split, name, folder, _images(folder)) for split, name, folder in class_folders]
    total = sum(len(images) for *_, images in listed)
    if total == 0:
        raise BuildError(f'the class folders of {root} hold no images ({", ".join(IMAGE_SUFFIXES)})')

    label_of = {name: index for index, name in enumerate(class_names)}

    def items():
        for split, name, folder, images in listed:
            for relative in images:
                where = os.path.relpath(os.path.join(folder, relative), root)
                yield Item(key=where, where=where, split=split,
                           image_path=os.path.join(folder, relative), label=label_of[name])
    return Source(features=IMAGE_LABEL, items=items(), class_names=class_names,
                  has_splits=bool(set(splits) - {'train'}), total=total)
