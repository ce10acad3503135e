"""Reads caption tables (CSV, TSV, JSONL, parquet) whose rows name an image and a caption, or
question tables (columns image, question, answer: VQA-style) whose answers become the classes.

A question table is one with a 'question' or 'answer' column (and no --caption_column): each row
is a record with the question as its text and the index of its answer as its label; the class
names are the distinct answers (stripped), sorted, stored with the dataset. A row's key is its
image, so with --val_fraction all questions about one image land in the same split.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Iterator

from mmjax.data.build.detect import CAPTION_COLUMNS, IMAGE_COLUMNS, SPLIT_COLUMNS
from mmjax.data.build.records import IMAGE_TEXT, BuildError, Item, Skip, Source

QUESTION_ANSWER = ('image', 'text', 'label')
SPLIT_NAMES = {'train': 'train', 'val': 'validation', 'valid': 'validation',
               'validation': 'validation', 'dev': 'validation', 'test': 'test'}


def _rows_csv(path: str, delimiter: str):
    # surrogateescape: a caption that is not UTF-8 is skipped later, not fatal for the file.
    csv.field_size_limit(2 ** 31 - 1)  # Long captions.
    with open(path, newline='', encoding='utf-8', errors='surrogateescape') as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        yield list(reader.fieldnames or [])
        yield from reader


def _rows_jsonl(path: str):
    with open(path, 'rb') as f:
        lines = (line for line in f if line.strip())
        first = next(lines, None)
        if first is None:
            yield []
            return
        records = (_json_record(line) for line in lines)
        head = _json_record(first)
        yield list(head) if isinstance(head, dict) else []
        yield head
        yield from records


def _json_record(line: bytes):
    try:
        return json.loads(line.decode('utf-8', errors='surrogateescape'))
    except ValueError:
        return None  # Counted as a bad_row.


def _rows_parquet(path: str):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top  # A tfds dependency; slow.
    table = pq.ParquetFile(path)
    yield list(table.schema_arrow.names)
    for batch in table.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _rows(path: str):
    """The column names, then one dict per row (None for a row that is not a JSON object)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == '.parquet':
        return _rows_parquet(path)
    if suffix == '.jsonl':
        return _rows_jsonl(path)
    return _rows_csv(path, '\t' if suffix == '.tsv' else ',')


def _pick(found: list[str], given: str | None, defaults, what: str, flag: str, path: str,
          required: bool = True) -> str | None:
    if given:
        if given not in found:
            raise BuildError(f'{path} has no column {given!r} (columns: {", ".join(found)}); '
                             f'fix {flag}')
        return given
    lower = {c.lower(): c for c in found}
    for name in defaults:
        if name in lower:
            return lower[name]
    if required:
        raise BuildError(f'{path} has no {what} column (columns: {", ".join(found) or "none"}); '
                         f'pass {flag}')
    return None


def _image_of(value, folder: str) -> dict | None:
    """The image a cell names: {'image_path': ...} or {'image_bytes': ...}; None when empty."""
    if isinstance(value, dict):  # Hugging Face parquet: {'bytes': ..., 'path': ...}.
        value = value.get('bytes') or value.get('path')
    if isinstance(value, (bytes, bytearray)):
        return {'image_bytes': bytes(value)} if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    if value.startswith(('http://', 'https://')):
        raise BuildError(f'the image column holds URLs ({value[:60]}): `mmjax data build` reads local '
                         'files; download them first (e.g. img2dataset --output_format webdataset) '
                         'and build from the shards')
    return {'image_path': os.path.join(folder, os.path.expanduser(value))}


def _answer(row, answer_col) -> str:
    value = row.get(answer_col)
    return '' if value is None else str(value).strip()


def _items(path: str, rows, image_col, caption_col, split_col, key_col, answer_col=None,
           label_of=None) -> Iterator[Item | Skip]:
    folder, base = os.path.dirname(path), os.path.basename(path)
    for number, row in enumerate(rows, start=1):
        where = f'{base} row {number}'
        if not isinstance(row, dict):
            yield Skip(where, 'bad_row')
            continue
        split = None
        if split_col:
            value = str(row.get(split_col) or '').strip().lower()
            if value not in SPLIT_NAMES:
                raise BuildError(f'{where}: split column {split_col!r} holds {value!r}; expected one '
                                 f'of {", ".join(SPLIT_NAMES)} (fix the table or --split_column)')
            split = SPLIT_NAMES[value]
        image = _image_of(row.get(image_col), folder)
        if image is None:
            yield Skip(where, 'missing_image')
            continue
        caption = row.get(caption_col)
        if answer_col:   # a question table: keyed by its image, named by its row
            answer = _answer(row, answer_col)
            if not answer:
                yield Skip(where, 'missing_answer')
                continue
            key = str(row[image_col]).strip() if 'image_path' in image else where
            yield Item(key=key, where=f'{where} ({str(row[image_col]).strip()[:60]})', split=split,
                       text=caption, label=label_of[answer], **image)
            continue
        if 'image_path' in image:
            key = where = str(row[image_col]).strip()
        else:
            key = str(row[key_col]) if key_col and row.get(key_col) is not None else where
        yield Item(key=key, where=where, split=split, text=caption, **image)


def _qa_columns(found: list[str], columns: dict, path: str) -> tuple | None:
    """(question, answer) column names of a question table, None for a caption table."""
    lower = {c.lower(): c for c in found}
    if columns.get('caption_column') or not {'question', 'answer'} & set(lower):
        return None
    for have, missing in (('question', 'answer'), ('answer', 'question')):
        if missing not in lower:
            raise BuildError(f'{path} has a {have!r} column but no {missing!r} column (columns: '
                             f'{", ".join(found)}); a question table has image, question and '
                             f'answer columns')
    return lower['question'], lower['answer']


def _columns_of(path: str, columns: dict) -> tuple:
    """(image, caption or question, split, key, answer or None) column names of one table;
    missing ones are an error."""
    rows = _rows(path)
    found = next(rows)
    rows.close()
    qa = _qa_columns(found, columns, path)
    return (_pick(found, columns.get('image_column'), IMAGE_COLUMNS, 'image', '--image_column', path),
            qa[0] if qa else _pick(found, columns.get('caption_column'), CAPTION_COLUMNS, 'caption',
                                   '--caption_column', path),
            _pick(found, columns.get('split_column'), SPLIT_COLUMNS, 'split', '--split_column', path,
                  required=False),
            'key' if 'key' in found else None,  # img2dataset's record id.
            qa[1] if qa else None)


def _answers(files: list[str], names: list[tuple]) -> list[str]:
    """The sorted distinct answers of question tables (a first pass over the rows)."""
    found = set()
    for path, file_columns in zip(files, names):
        rows = _rows(path)
        next(rows)
        found |= {_answer(row, file_columns[4]) for row in rows if isinstance(row, dict)}
    found.discard('')
    if not found:
        raise BuildError(f'the answer column of {", ".join(files)} is empty in every row; '
                         f'fill in the answers (they become the classes)')
    return sorted(found)


def read(files: list[str], columns: dict) -> Source:
    """All rows of `files` (in order) as image-caption items, or image-question items labelled
    with their answer's index; columns are checked up front."""
    names = [_columns_of(path, columns) for path in files]
    qa = [path for path, n in zip(files, names) if n[4]]
    if qa and len(qa) != len(files):
        plain = next(path for path, n in zip(files, names) if not n[4])
        raise BuildError(f'{qa[0]} is a question table (question, answer columns), {plain} a '
                         f'caption table; build them as two datasets')
    class_names = _answers(files, names) if qa else None
    label_of = {answer: index for index, answer in enumerate(class_names or ())}

    def items():
        for path, file_columns in zip(files, names):
            rows = _rows(path)
            next(rows)
            yield from _items(path, rows, *file_columns, label_of=label_of)
    return Source(features=QUESTION_ANSWER if qa else IMAGE_TEXT, items=items(),
                  class_names=class_names, has_splits=any(n[2] for n in names))
