"""Reads CoNLL-format tagged sentences (a token per line, its tag in the last column, a blank line
between sentences; -DOCSTART- lines skipped) into one text record per sentence.

A record's text is the sentence as 'WORD TAG' lines (the other columns dropped; mmjax/data/conll.py
reads it back). The tag set is stored with the dataset as its class names, 'O' first, then the
others sorted; the scheme is BIO (B-, I-) or IOBES (also E-, S-), detected from the tags or given
with --tag_scheme, and every tag is checked against it. Splits come from the file names when they
name one (CoNLL-2003's eng.train / eng.testa / eng.testb, or train / dev / valid / test), else
a --val_fraction of the sentences goes to validation. Everything is read and checked before a
record is written, so a bad file leaves any dataset built before untouched.
"""

from __future__ import annotations

import os
import re

from mmjax.data.build.records import TEXT, BuildError, Item, Source
from mmjax.data.conll import DOCSTART

SCHEMES = {'bio': 'BI', 'iobes': 'BIES'}
_SPLITS = (('testa', 'validation'), ('testb', 'test'), ('train', 'train'),
           ('dev', 'validation'), ('valid', 'validation'), ('validation', 'validation'),
           ('val', 'validation'), ('test', 'test'))


def split_of(path: str) -> str | None:
    """The split a file's name names ('eng.testa' -> validation), else None."""
    words = re.split(r'[^a-z]+', os.path.basename(path).lower())
    return next((split for word, split in _SPLITS if word in words), None)


def _sentences(path: str, where: str):
    """[(first line number, [(word, tag, line number)])] of one file."""
    out, words = [], []
    with open(path, encoding='utf-8', errors='strict') as f:
        try:
            for number, line in enumerate(f, start=1):
                columns = line.split()
                if not columns or columns[0] == DOCSTART:
                    if words:
                        out.append(words)
                        words = []
                    continue
                if len(columns) < 2:
                    raise BuildError(f'{where}:{number}: {line.strip()!r} has no tag column; CoNLL '
                                     f'lines are "WORD ... TAG": add the tag (O outside entities)')
                words.append((columns[0], columns[-1], number))
        except UnicodeDecodeError as err:
            raise BuildError(f'{where}: not UTF-8 ({err.reason} at byte {err.start}); re-encode '
                             f'the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)') from None
    if words:
        out.append(words)
    return out


def scheme_of(tags, given: str | None) -> str:
    """'bio' or 'iobes': `given` (checked), else 'iobes' when any tag starts E- or S-."""
    if given is not None:
        if given.lower() not in SCHEMES:
            raise BuildError(f'unknown --tag_scheme {given!r}; valid: {", ".join(SCHEMES)} '
                             f'(or leave it out to detect it)')
        return given.lower()
    return 'iobes' if any(t[:2] in ('E-', 'S-') for t in tags) else 'bio'


def _check_tag(tag: str, prefixes: str, scheme: str, where: str, number: int) -> None:
    prefix, dash, kind = tag.partition('-')
    if tag != 'O' and not (dash and kind and prefix in prefixes):
        raise BuildError(f'{where}:{number}: tag {tag!r} is not {scheme.upper()} (O, or '
                         f'{"/".join(prefixes)}-TYPE); fix the tag, or pass --tag_scheme '
                         f'{"iobes" if scheme == "bio" else "bio"} if the file uses that scheme')


def read(files: list[str], columns: dict) -> Source:
    """One text record per sentence of `files` (in order), with the tag set as class names."""
    unknown = [k for k in ('image_column', 'caption_column', 'split_column', 'text_unit')
               if columns.get(k)]
    if unknown:
        raise BuildError(f'a CoNLL corpus has no {", ".join(unknown)}: drop --{" --".join(unknown)}')
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    read_files = [(path, os.path.relpath(path, root)) for path in files]
    sentences = [(path, where, _sentences(path, where)) for path, where in read_files]
    every = [(tag, where, number) for _, where, found in sentences for sent in found
             for _, tag, number in sent]
    if not every:
        raise BuildError(f'no tagged tokens in {", ".join(w for _, w in read_files)}; point SOURCE '
                         f'at CoNLL files (WORD ... TAG lines, sentences separated by blank lines)')
    scheme = scheme_of((t for t, _, _ in every), columns.get('tag_scheme'))
    for tag, where, number in every:
        _check_tag(tag, SCHEMES[scheme], scheme, where, number)
    tags = ['O'] + sorted({t for t, _, _ in every} - {'O'})
    splits = {path: split_of(path) for path in files}

    def items():
        for path, where, found in sentences:
            for index, sent in enumerate(found):
                text = ''.join(f'{word} {tag}\n' for word, tag, _ in sent)
                yield Item(key=f'{where}:{index}', where=f'{where}:{sent[0][2]}',
                           split=splits[path], text=text)
    return Source(features=TEXT, items=items(), class_names=tags,
                  has_splits=any(splits.values()), total=sum(len(f) for _, _, f in sentences))
