"""Reads a text corpus: .txt files (a document per file or per blank-line block) or JSONL `text`."""

from __future__ import annotations

import json
import os
from typing import Iterator

from mmjax.data.build.records import TEXT, BuildError, Item, Skip, Source

TEXT_UNITS = ('file', 'block')


def default_unit(files: list[str]) -> str:
    """One .txt file is split into blank-line blocks; several are a document each."""
    return 'block' if len(files) == 1 else 'file'


def _blocks(path: str, where: str) -> Iterator[Item]:
    """Blank-line-separated blocks, read line by line (bytes: the worker decodes them)."""
    lines, number = [], 0
    with open(path, 'rb') as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield Item(key=f'{where}:{number}', where=f'{where} block {number}', text=b''.join(lines))
                lines, number = [], number + 1
    if lines:
        yield Item(key=f'{where}:{number}', where=f'{where} block {number}',
                   text=b''.join(lines))


def _jsonl(path: str, where: str, field: str) -> Iterator[Item | Skip]:
    with open(path, 'rb') as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            at = f'{where} line {number}'
            try:
                record = json.loads(line.decode('utf-8', errors='surrogateescape'))
            except ValueError:
                yield Skip(at, 'bad_row')
                continue
            if not isinstance(record, dict) or record.get(field) is None:
                yield Skip(at, 'missing_text')
                continue
            yield Item(key=f'{where}:{number}', where=at, text=record[field])


def read(files: list[str], columns: dict) -> Source:
    """Documents of `files` in order; `text_unit` applies to .txt, `caption_column` names the JSONL
    field (default 'text')."""
    unit = columns.get('text_unit') or default_unit(files)
    if unit not in TEXT_UNITS:
        raise BuildError(f'unknown --text_unit {unit!r}; valid: {", ".join(TEXT_UNITS)}')
    if columns.get('image_column') or columns.get('split_column'):
        raise BuildError('a text corpus has no image or split column: drop --image_column / '
                         '--split_column')
    field = columns.get('caption_column') or 'text'
    root = os.path.commonpath([os.path.dirname(f) for f in files])

    def items():
        for path in files:
            where = os.path.relpath(path, root)
            if path.endswith('.jsonl'):
                yield from _jsonl(path, where, field)
            elif unit == 'block':
                yield from _blocks(path, where)
            else:
                with open(path, 'rb') as f:
                    yield Item(key=where, where=where, text=f.read())
    return Source(features=TEXT, items=items())
