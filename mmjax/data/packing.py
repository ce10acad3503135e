"""Packed MLM / LM rows that each process makes for itself: global row g is a function of the
seed and g alone, and a process tokenises only the documents of the rows it reads.

The global stream of documents (shuffled afresh every epoch by the seed, mixed by weight:
`pipeline.global_stream`) is cut into windows of D documents; window w packs documents
[w*D, (w+1)*D) into R rows of L - 1 tokens (`data.pack_window` = R): each document becomes
`ids [SEP]` (the tokenizer's eos_id), the window's documents are joined and cut into its R
rows, and `Collate` prefixes each row with [CLS] (bos_id). Global row g is row g % R of window
g // R, so reading rows [a, b) tokenises windows a // R .. (b - 1) // R and nothing else: P
processes each tokenise 1/P of the stream (exactly, when R divides the batch per process),
and a resumed run starts at its row without re-reading what came before.

A window holds exactly R * (L - 1) tokens, so no row is padded:
- overflow is dropped: the tokens of a window's documents past its R rows (the tail of the
  document cut at the window's end, and any documents after it) are never trained on in that
  epoch (a later epoch places the documents elsewhere); `counts['dropped']`.
- a window whose documents fall short borrows the documents that follow it in the stream
  (the next window's first ones, which so appear twice); `counts['borrowed']`.
D is chosen once so that a window's documents fill it on average: R * (L - 1) over the mean
length (ids + [SEP]) of the stream's first SAMPLE_DOCUMENTS documents (times FILL, which would
trade repeated tokens for dropped ones). Measured on the built-in prose (~60-token documents,
WordPiece 8,192, the first 300 windows): 6.7% of the tokens dropped and 0.1% repeated at
L = 64, R = 8 (D = 8); 2.1% and 0.2% at L = 512, R = 8 (D = 62); varied lengths cost more.
The first SAMPLE_DOCUMENTS documents are the same on every process and every resume, so is D;
the checkpointed data state names (R, D), and a resume with another refuses. A document
longer than a window keeps its first R * (L - 1) tokens: split long texts into documents
(`mmjax data build --kind text --text_unit block`).

A row's '_skipped' sums the bad records replaced by the documents that start in it.
"""

from __future__ import annotations

import collections
import logging
import sys

import grain
import numpy as np

SAMPLE_DOCUMENTS = 256   # documents tokenised once to choose D
FILL = 1.0               # a window's documents hold as many tokens as it does, on average
log = logging.getLogger(__name__)


def documents_per_window(stream, tokenizer, capacity: int, counts=None) -> int:
    """D: how many documents of `stream` fill `capacity` tokens (times FILL) on average,
    from the mean length of its first SAMPLE_DOCUMENTS documents; logs the share of tokens
    those documents would drop and repeat, and warns of documents longer than a window."""
    sample = stream._getitems(list(range(min(SAMPLE_DOCUMENTS, len(stream)))))
    lengths = np.asarray([len(ids) + 1 for ids in tokenizer.ids([e['text'] for e in sample])])
    if counts is not None:
        counts['sampled'] += int(lengths.sum())
    documents = max(1, round(FILL * capacity * len(lengths) / lengths.sum()))
    windows = lengths[:len(lengths) // documents * documents].reshape(-1, documents).sum(axis=1)
    if len(windows):
        log.info('packing %d documents into each window of %d tokens: of the first %d '
                 'documents, %.1f%% of the tokens are dropped and %.1f%% repeated', documents,
                 capacity, len(lengths), 100 * np.maximum(windows - capacity, 0).sum() / windows.sum(),
                 100 * np.maximum(capacity - windows, 0).sum() / windows.sum())
    if (lengths > capacity).mean() > 0.01:
        log.warning('%.0f%% of the first %d documents are longer than a packing window (%d tokens): '
                    'a window keeps a document\'s first %d tokens only; split long texts into '
                    'documents (`mmjax data build --kind text --text_unit block`) or raise '
                    'data.pack_window', 100 * (lengths > capacity).mean(), len(lengths), capacity,
                    capacity)
    return documents


class PackedRows(grain.MapDataset):
    """Element g: packed row g, {'text': int32 [width] (no [CLS]), '_skipped': int32}.

    `counts`: tokens this object tokenised ('tokenised': the windows' documents and borrowed
    ones; 'sampled': the documents that chose D), 'dropped' and 'borrowed' (see the module),
    and 'windows' packed. Counted in this process only (not in grain worker processes)."""

    def __init__(self, stream, tokenizer, *, width: int, rows: int, documents: int | None = None):
        super().__init__(stream)
        self._tokenizer, self.width, self.rows = tokenizer, width, rows
        self.counts = collections.Counter()
        self.documents = documents or documents_per_window(stream, tokenizer, rows * width,
                                                           self.counts)
        self._last = (None, None)   # (window, packed): consecutive reads share one window

    def __len__(self):
        # A repeated stream is 'infinite' (sys.maxsize long).
        return min(len(self._parent) // self.documents * self.rows, sys.maxsize)

    def __str__(self):
        return f'PackedRows(R={self.rows}, D={self.documents})'

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._getitems([index])[0]

    def _getitems(self, indices):
        out = []
        for g in indices:
            tokens, skipped = self.window(g // self.rows)
            out.append({'text': tokens[g % self.rows], '_skipped': skipped[g % self.rows]})
        return out

    def _tokenise(self, examples):
        """[ids + [eos] int32] and [skipped] of `examples`, counted."""
        pieces = [np.asarray(ids + [self._tokenizer.eos_id], np.int32)
                  for ids in self._tokenizer.ids([e['text'] for e in examples])]
        self.counts['tokenised'] += sum(len(p) for p in pieces)
        return pieces, [int(e['_skipped']) for e in examples]

    def window(self, w: int):
        """Window w: (tokens int32 [rows, width], skipped int32 [rows])."""
        if self._last[0] == w:
            return self._last[1]
        capacity, first = self.rows * self.width, w * self.documents
        following = first + self.documents
        pieces, skips = self._tokenise(self._parent._getitems(list(range(first, following))))
        total = sum(len(p) for p in pieces)
        while total < capacity:   # short: borrow the documents that follow the window
            more, skip = self._tokenise([self._parent[following % len(self._parent)]])
            self.counts['borrowed'] += min(len(more[0]), capacity - total)
            pieces, skips, total = pieces + more, skips + skip, total + len(more[0])
            following += 1
        self.counts['dropped'] += total - capacity
        self.counts['windows'] += 1
        starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
        inside = starts < capacity    # a document's replaced records count in its first row
        skipped = np.bincount(starts[inside] // self.width, np.asarray(skips)[inside],
                              minlength=self.rows).astype(np.int32)
        packed = (np.concatenate(pieces)[:capacity].reshape(self.rows, self.width), skipped)
        self._last = (w, packed)
        return packed


class Collate:
    """Packed rows -> {'text': int32 [b, width + 1] ([CLS] + row), '_skipped', '_bad'}."""

    def __init__(self, bos_id: int):
        self.bos_id = bos_id

    def __call__(self, rows):
        tokens = np.stack([r['text'] for r in rows])
        return {'text': np.pad(tokens, ((0, 0), (1, 0)), constant_values=self.bos_id),
                '_skipped': np.asarray([r['_skipped'] for r in rows], np.int32),
                '_bad': np.full(len(rows), '')}   # packed rows do not name their bad records
