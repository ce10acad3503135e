"""Sentence-pair rows for next-sentence prediction: `[CLS] A [SEP] B [SEP]`, segment ids, and
whether B follows A in its document or was drawn from another one.

Each example is one document (a record's text: a prose chunk, a `--kind text` file or block).
Its words are cut at a sentence end (a word ending in . ! or ?, closing quotes or brackets
allowed; at any word when the text has none inside it), drawn uniformly: A is the text up to
the cut. With probability 1/2 B is the rest of the same text (`is_random` 0, B follows A);
otherwise B is as many words (as the rest would have been) of another record of the same
split, uniformly drawn, from one of its own cuts (`is_random` 1), drawn among those that leave
that many words (the first cut when none does). So A always ends and B always starts at a cut,
and the pair's length says nothing of which B it is (BERT fills both kinds of pair to the
same target length for the same reason). The pair is then tokenised and cut to the row
longest-first (A loses its first tokens, B its last, B first on a tie): the junction of A and
B is what is kept.

Every choice draws from the example's generator, which the pipeline seeds by (seed, dataset,
position in the global stream) for training and by the record's index for evaluation
(mmjax/data/pipeline.py): a resumed run, or another process count, reads the same pairs.
`is_random` is transformers' `next_sentence_label` (0: B continues A).
"""

from __future__ import annotations

import re

import grain
import numpy as np

from mmjax.data import transforms
from mmjax.data.bad_records import BAD_RECORD_ERRORS, MAX_REPLACEMENTS
from mmjax.errors import ConfigError

TYPES = 'token_types'     # the batch key whose presence in a task's spec asks for pair rows
LABEL = 'is_random'       # int32: 1 when B comes from another document
SENTENCE_END = re.compile(r'[.!?]["\'”’)\]]*$')


def cuts(words: list[str]) -> list[int]:
    """Where a text may be cut into non-empty A = words[:c] and B = words[c:]: after each word
    that ends a sentence, else (none inside the text) after any word."""
    ends = [i + 1 for i, word in enumerate(words[:-1]) if SENTENCE_END.search(word)]
    return ends or list(range(1, len(words)))


def pair_row(ids_a, ids_b, length: int, cls_id: int, sep_id: int, pad_id: int):
    """(tokens int32 [length], token types int32 [length]) of `[CLS] A [SEP] B [SEP]` padded,
    the pair cut longest-first to length - 3 tokens (A from its front, B from its back; B
    when they are as long). Types: 0 for [CLS] A [SEP] and padding, 1 for B [SEP]."""
    if length < 5:
        raise ValueError(f'a sentence-pair row needs length >= 5, got {length}')
    a, b = len(ids_a), len(ids_b)
    while a + b > length - 3:
        if a > b:
            a -= 1
        else:
            b -= 1
    row = [cls_id, *ids_a[len(ids_a) - a:], sep_id, *ids_b[:b], sep_id]
    tokens = np.full(length, pad_id, np.int32)
    tokens[:len(row)] = row
    types = np.zeros(length, np.int32)
    types[a + 2:len(row)] = 1
    return tokens, types


class SentencePairs(grain.transforms.RandomMap):
    """example['text'] (one document) -> 'text' (int32 [length] pair row), 'token_types'
    (int32 [length]) and 'is_random' (int32), drawing B's other document from `others`: the
    split's records (random access), made text by the dataset's deterministic `decode_ops`."""

    def __init__(self, others, decode_ops, tokenizer, length: int):
        self.others, self.decode_ops = others, list(decode_ops)
        self.tokenizer, self.length = tokenizer, int(length)

    def random_map(self, element, rng: np.random.Generator):
        words = element['text'].split()
        if len(words) < 2:
            raise ValueError('a sentence pair needs a text of two words or more')
        points = cuts(words)
        cut = points[rng.integers(len(points))]
        is_random = bool(rng.random() < 0.5)
        if is_random:
            other, need = self._other_document(element['text'], rng), len(words) - cut
            points = [c for c in cuts(other) if len(other) - c >= need] or cuts(other)[:1]
            start = points[rng.integers(len(points))]
            b_words = other[start:start + need]
        else:
            b_words = words[cut:]
        # Each word is a token or more: `length` words of each side fill any row.
        ids_a, ids_b = self.tokenizer.ids([' '.join(words[:cut][-self.length:]),
                                           ' '.join(b_words[:self.length])])
        tok = self.tokenizer
        tokens, types = pair_row(ids_a, ids_b, self.length, tok.cls_id, tok.sep_id, tok.pad_id)
        return {**element, 'text': tokens, TYPES: types, LABEL: np.int32(is_random)}

    def _other_document(self, text, rng) -> list[str]:
        """The words of a uniformly drawn record other than `text` (the next one along when the
        draw is `text` itself, too short to cut, or does not decode)."""
        count = len(self.others)
        start = int(rng.integers(count))
        for offset in range(min(count, MAX_REPLACEMENTS)):
            try:
                other = transforms.apply_one(self.decode_ops, self.others[(start + offset) % count],
                                             (0,))['text']
            except BAD_RECORD_ERRORS:
                continue
            if other != text and len(other.split()) >= 2:
                return other.split()
        raise ValueError(f'no other document of two words or more found in {MAX_REPLACEMENTS} '
                         f'records from record {start} to draw a random sentence B from')


def op(dataset, source, tokenizer, spec) -> SentencePairs:
    """The transform that makes a split's pair rows (`source`: that split's records), or a
    ConfigError naming what is missing."""
    if source is None or not dataset.random_access:
        raise ConfigError('sentence pairs draw B from random other documents, which a streamed '
                          'dataset cannot give: build it with `mmjax data build` (random access)')
    if getattr(tokenizer, 'cls_id', None) is None or getattr(tokenizer, 'sep_id', None) is None:
        raise ConfigError("sentence pairs are [CLS] A [SEP] B [SEP]: set data.tokenizer='wordpiece'")
    if len(source) < 2:
        raise ConfigError('sentence pairs draw B from other documents: the split holds one only')
    return SentencePairs(source, dataset.example_ops(train=False), tokenizer, spec['text'].shape[0])
