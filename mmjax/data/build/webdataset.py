"""Reads webdataset tar shards as img2dataset writes them: KEY.jpg|png|webp + KEY.txt [+ KEY.json]."""

from __future__ import annotations

import os
import tarfile
from typing import Iterator

from mmjax.data.build.records import IMAGE_TEXT, BuildError, Item, Skip, Source

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')
CAPTION_EXTENSION = 'txt'
_END_OF_ARCHIVE = 1024  # Two zero blocks close a complete tar.


def _split_name(member_name: str) -> tuple[str, str]:
    """'dir/000123.jpg' -> ('dir/000123', 'jpg'): webdataset keys end at the basename's first dot."""
    folder, base = os.path.split(member_name)
    stem, _, extension = base.partition('.')
    return os.path.join(folder, stem), extension.lower()


def _record(shard: str, key: str, files: dict) -> Item | Skip:
    where = f'{shard}/{key}'
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
    if image is None:
        return Skip(where, 'missing_image')
    if CAPTION_EXTENSION not in files:
        return Skip(where, 'missing_caption')
    return Item(key=key, where=where, image_bytes=image, text=files[CAPTION_EXTENSION])


def _shard_items(path: str) -> Iterator[Item | Skip]:
    """A shard's records in tar order; a truncated shard loses its last record (one truncated_tar)."""
    shard = os.path.basename(path)
    key, files, truncated = None, {}, False
    with open(path, 'rb') as f:
        try:
            with tarfile.open(fileobj=f, mode='r|') as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    member_key, extension = _split_name(member.name)
                    if member_key != key:
                        if key is not None:
                            yield _record(shard, key, files)
                        key, files = member_key, {}
                    if extension in IMAGE_EXTENSIONS or extension == CAPTION_EXTENSION:
                        files[extension] = tar.extractfile(member).read()
                # A header cut short ends a stream silently: the file then stops before the
                # two zero blocks that close a complete archive.
                truncated = os.fstat(f.fileno()).st_size < tar.offset + _END_OF_ARCHIVE
        except (tarfile.TarError, EOFError, OSError):
            truncated = True
    if truncated:
        record = _record(shard, key, files) if key is not None else None
        if isinstance(record, Item):
            yield record  # Complete before the cut; what followed it is lost.
            yield Skip(f'{shard} after {key}', 'truncated_tar')
        else:
            yield Skip(f'{shard}/{key or "(first record)"}', 'truncated_tar')
    elif key is not None:
        yield _record(shard, key, files)


def read(files: list[str], columns: dict) -> Source:
    """All records of the shards, shard by shard."""
    if any(columns.get(c) for c in ('image_column', 'caption_column', 'split_column')):
        raise BuildError('webdataset shards have no columns: drop --image_column / '
                         '--caption_column / --split_column')

    def items():
        for path in files:
            yield from _shard_items(path)
    return Source(features=IMAGE_TEXT, items=items())
