"""Reads the Karpathy-split COCO / Flickr30k retrieval benchmarks: the split JSON + image files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tarfile
import zipfile
import zlib
from typing import Callable, Iterator

from mmjax.data.build.detect import IMAGE_SUFFIXES, ONE_INPUT
from mmjax.data.build.records import IMAGE_CAPTIONS, BuildError, Item, Skip, Source

SPLITS = {'test': 'test', 'val': 'validation', 'train': 'train', 'restval': 'train'}
NOT_FOUND = 'train_images_not_found'   # Summary count: train/restval images --images lacks.
IMAGES_HINT = ('a .zip (e.g. val2014.zip), an uncompressed .tar (e.g. flickr30k-images.tar) or a '
               'folder')
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, tarfile.TarError,
                NotImplementedError, RuntimeError)  # The last two: unsupported or encrypted zips.


@dataclasses.dataclass
class _Images:
    """One --images path: its image files by relative path and by basename, and a reader of one
    (None for a folder: the workers read its files)."""
    path: str
    names: dict[str, str]
    read: Callable[[str], bytes] | None


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One image of the split JSON."""
    path: str                    # filepath/filename, or filename alone (Flickr30k)
    filename: str
    split: str
    captions: tuple[str, ...]


def image_paths(images: str | list[str] | None) -> list[str]:
    """The --images paths (comma-separated, or a list), absolute; each must exist."""
    if not images:
        raise BuildError(f'--kind karpathy needs --images: where the image files are, {IMAGES_HINT} '
                         '(several: comma-separated)')
    given = images.split(',') if isinstance(images, str) else list(images)
    paths = [os.path.abspath(os.path.expanduser(p.strip())) for p in given if p.strip()]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise BuildError(f'--images {missing[0]} does not exist; pass {IMAGES_HINT}')
    return paths


def _index(relative: list[str]) -> dict[str, str]:
    """{relative path or basename: relative path} of the image files (a path wins over a name)."""
    images = [r for r in relative if r.lower().endswith(IMAGE_SUFFIXES)]
    names = {r: r for r in images}
    for r in images:
        names.setdefault(r.rsplit('/', 1)[-1], r)
    return names


def _open_zip(path: str, stack: contextlib.ExitStack) -> _Images:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = [i.filename for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise BuildError(f'cannot read --images {path} as a zip ({err}); pass {IMAGES_HINT}') from None
    names = _index([m.lstrip('/') for m in members])
    by_name = {m.lstrip('/'): m for m in members}
    return _Images(path, names, lambda name: archive.read(by_name[name]))


def _open_tar(path: str, stack: contextlib.ExitStack) -> _Images:
    try:
        archive = stack.enter_context(tarfile.open(path, mode='r:'))
        members = {m.name.removeprefix('./').lstrip('/'): m for m in archive.getmembers()
                   if m.isfile()}
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BuildError(f'cannot read --images {path} as an uncompressed tar ({err}): a compressed '
                         'one would be decompressed again for every image; unpack it (tar xf) and '
                         'pass the folder') from None
    return _Images(path, _index(list(members)),
                   lambda name: archive.extractfile(members[name]).read())


def _open_folder(path: str) -> _Images:
    relative = []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith('.'))
        base = os.path.relpath(folder, path).replace(os.sep, '/')
        relative += [f if base == '.' else f'{base}/{f}' for f in sorted(files)
                     if not f.startswith('.')]
    return _Images(path, {k: os.path.join(path, v) for k, v in _index(relative).items()}, None)


def _open(path: str, stack: contextlib.ExitStack) -> _Images:
    """A folder, or an archive by its suffix (.zip, .tar*), else by its content."""
    if os.path.isdir(path):
        return _open_folder(path)
    name = os.path.basename(path).lower()
    is_tar = name.endswith(('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tar.xz'))
    if name.endswith('.zip') or not is_tar and zipfile.is_zipfile(path):
        return _open_zip(path, stack)
    if is_tar or tarfile.is_tarfile(path):
        return _open_tar(path, stack)
    raise BuildError(f'--images {path} is neither a zip, a tar nor a folder; pass {IMAGES_HINT}')


def _entry(number: int, image) -> _Entry | None:
    """An image record of the JSON; None when it names no file (a bad record)."""
    if not isinstance(image, dict) or not isinstance(image.get('filename'), str):
        return None
    split = image.get('split')
    if split not in SPLITS:
        raise BuildError(f'images[{number}] has split {split!r}; a Karpathy split JSON holds '
                         f'{", ".join(SPLITS)}')
    filename, filepath = image['filename'], image.get('filepath')
    path = f'{filepath}/{filename}' if isinstance(filepath, str) and filepath else filename
    sentences = image.get('sentences') if isinstance(image.get('sentences'), list) else []
    captions = tuple(s['raw'] for s in sentences if isinstance(s, dict) and 'raw' in s)
    return _Entry(path, filename, SPLITS[split], captions)


def _entries(path: str) -> list[_Entry | None]:
    """The JSON's images in order (None: a bad record); a file that is not one is an error."""
    try:
        with open(path, 'rb') as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise BuildError(f'{path} is not JSON ({err}); pass {ONE_INPUT["karpathy"]}') from None
    images = data.get('images') if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise BuildError(f'{path} has no "images" list; pass {ONE_INPUT["karpathy"]}')
    return [_entry(n, image) for n, image in enumerate(images)]


def _find(entry: _Entry, sources: list[_Images]) -> tuple[_Images, str] | None:
    """Where the image is: by filepath/filename, else by filename alone, first --images first."""
    for images in sources:
        hit = images.names.get(entry.path) or images.names.get(entry.filename)
        if hit:
            return images, hit
    return None


def _item(entry: _Entry, found: tuple[_Images, str] | None) -> Item | Skip:
    if found is None:
        return Skip(entry.path, 'missing_file')
    images, name = found
    if images.read is None:
        return Item(key=entry.path, where=entry.path, split=entry.split, image_path=name,
                    captions=entry.captions)
    try:
        data = images.read(name)
    except _READ_ERRORS:
        return Skip(f'{os.path.basename(images.path)}/{name}', 'unreadable_file')
    return Item(key=entry.path, where=entry.path, split=entry.split, image_bytes=data,
                captions=entry.captions)


def _open_all(paths: list[str], stack: contextlib.ExitStack) -> list[_Images]:
    """Every --images path opened (archives stay open on `stack`); closes them on an error."""
    try:
        return [_open(path, stack) for path in paths]
    except BaseException:
        stack.close()
        raise


def read(inputs: list[str], columns: dict, images: list[str]) -> Source:
    """One record per image of the JSON, in its order: its captions and the image from --images.
    Test and val images must be there; train/restval ones --images lacks are left out (counted)."""
    if any(columns.values()):
        raise BuildError('a Karpathy split JSON has no columns: drop --image_column / '
                         '--caption_column / --split_column / --text_unit')
    entries = _entries(inputs[0])
    stack = contextlib.ExitStack()
    sources = _open_all(images, stack)
    located = [(n, e, _find(e, sources) if e else None) for n, e in enumerate(entries)]
    kept = [(n, e, hit) for n, e, hit in located if e is None or hit or e.split != 'train']
    if not any(hit for *_, hit in kept):
        stack.close()
        raise BuildError(f'none of the images that {inputs[0]} names is in --images '
                         f'{",".join(images)}; pass {IMAGES_HINT} holding them')

    def items() -> Iterator[Item | Skip]:
        with stack:
            for number, entry, hit in kept:
                yield Skip(f'images[{number}]', 'bad_row') if entry is None else _item(entry, hit)
    return Source(features=IMAGE_CAPTIONS, items=items(), has_splits=True, total=len(kept),
                  counts={NOT_FOUND: len(located) - len(kept)})
