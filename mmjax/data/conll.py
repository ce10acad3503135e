"""CoNLL-format tagged sentences (token per line, its tag in the last column, a blank line between
sentences) and their word-level tags put on word pieces: the first piece of each word carries
the word's tag, the other pieces and the special tokens IGNORE (BERT's NER recipe)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

IGNORE = -1   # a piece whose prediction is not scored
DOCSTART = "-DOCSTART-"   # CoNLL-2003's document separators: not sentences


def read(lines: Iterable[str]) -> list[tuple[list[str], list[str]]]:
    """[(words, tags)] of CoNLL lines: whitespace-separated columns, the first the word, the last
    its tag; blank lines end sentences; -DOCSTART- lines are skipped. A line with one column is
    an error naming its number (a tag is missing)."""
    sentences, words, tags = [], [], []
    for number, line in enumerate(lines, start=1):
        columns = line.split()
        if not columns or columns[0] == DOCSTART:
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if len(columns) < 2:
            raise ValueError(f"line {number} ({line.strip()!r}) has no tag column: CoNLL lines are "
                             f"'WORD ... TAG', the tag in the last column")
        words.append(columns[0])
        tags.append(columns[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def piece_labels(tokenizer, words: Sequence[str], tag_ids: Sequence[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [length], labels int32 [length]) of one sentence: [CLS] pieces [SEP] [PAD]...
    as the tokenizer's `encode` lays them out, each word's first piece labelled with its tag id,
    every other position IGNORE. Words are cut where the row is full (their tags are dropped)."""
    pieces, labels = [], []
    for word, tag in zip(words, tag_ids, strict=True):
        ids = tokenizer.ids([word])[0] or [tokenizer.unk_id]
        if len(pieces) + len(ids) > length - 2:
            break
        pieces += ids
        labels += [tag] + [IGNORE] * (len(ids) - 1)
    tokens = np.full(length, tokenizer.pad_id, np.int32)
    out = np.full(length, IGNORE, np.int32)
    tokens[:len(pieces) + 2] = [tokenizer.cls_id, *pieces, tokenizer.sep_id]
    out[1:len(labels) + 1] = labels
    return tokens, out
