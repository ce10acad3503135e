"""Byte-level BPE (GPT-2's scheme) learned from the run's own text, the same on every host.

Text is split as GPT-2 splits it (contractions, letter runs, digit runs, punctuation, each
with its leading space), every byte is a symbol (nothing is ever unknown), and merges are
learned by `merges.pair_merges` with ties broken by the pair's text, so the same texts give the
same tokenizer on any host and run. Ids: the four specials, the 256 byte symbols in GPT-2's
byte-to-unicode order, then one per learned token in the order it was learned.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from mmjax import paths
from mmjax.data.subwords import bytes_to_unicode, pack_ids, pair_merges

# pad, start of text, end of text (a causal LM's end of document), and the MLM mask.
BPE_SPECIALS = ('<|pad|>', '<|startoftext|>', '<|endoftext|>', '<|mask|>')
VOCAB_FILE = 'bpe.json'   # {"tokens": [token by id], "merges": [[a, b], ...]}


def pre_tokenizer():
    """GPT-2's split into words, each mapped to byte symbols ('Ġ' is the leading space)."""
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def learn_bpe(texts: Iterable[str], vocab_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """(tokens by id, merges in the order learned) of a vocabulary of `vocab_size` tokens."""
    split = pre_tokenizer()
    counts = collections.Counter()
    for text in texts:
        counts.update(w for w, _ in split.pre_tokenize_str(text))
    tokens = list(BPE_SPECIALS) + list(bytes_to_unicode().values())
    if vocab_size < len(tokens):
        raise ValueError(f'a byte-level BPE needs at least {len(tokens)} tokens (4 specials and '
                         f'256 bytes), asked for {vocab_size}')
    known, merges = set(tokens), []
    words = [list(w) for w in sorted(counts)]
    freq = [counts[w] for w in sorted(counts)]
    if len(tokens) < vocab_size:
        for a, b, new in pair_merges(words, freq, lambda a, b: a + b):
            merges.append((a, b))
            if new not in known:
                known.add(new)
                tokens.append(new)
            if len(tokens) >= vocab_size:
                break
    return tokens, merges


class BpeTokenizer:
    """Byte-level BPE with <|pad|> at id 0, as the models assume; rows are
    <|startoftext|> tokens <|endoftext|>, then padding (as CLIP's BPE rows are)."""

    vocab_file = VOCAB_FILE

    def __init__(self, tokens: Sequence[str], merges: Sequence[tuple[str, str]]):
        if tuple(tokens[:len(BPE_SPECIALS)]) != BPE_SPECIALS:
            raise ValueError(f'a BPE vocabulary starts with {BPE_SPECIALS}, this one with '
                             f'{tuple(tokens[:len(BPE_SPECIALS)])}')
        self.tokens, self.merges = list(tokens), [tuple(m) for m in merges]
        vocab = {t: i for i, t in enumerate(self.tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=self.merges))
        tok.pre_tokenizer = pre_tokenizer()
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(list(BPE_SPECIALS))
        self._tok = tok
        self.vocab_size = len(self.tokens)
        self.pad_id, self.sot_id, self.eot_id, self.mask_id = range(len(BPE_SPECIALS))
        self.special_ids = tuple(range(len(BPE_SPECIALS)))
        self.bos_id, self.eos_id = self.sot_id, self.eot_id
        self.cls_id, self.sep_id = self.sot_id, self.eot_id   # RoBERTa's roles for <s>, </s>

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        return cls(*learn_bpe(texts, vocab_size))

    @classmethod
    def from_vocab(cls, path: str) -> BpeTokenizer:
        """Loads a `bpe.json` that `save_vocab` wrote."""
        saved = json.loads(paths.resolve(path).read_text(encoding='utf-8'))
        return cls(saved['tokens'], saved['merges'])

    def vocab_text(self) -> str:
        """The vocabulary as `bpe.json` holds it (canonical: equal texts tokenise alike)."""
        return json.dumps({'tokens': self.tokens, 'merges': self.merges}, ensure_ascii=False)

    def save_vocab(self, path: str) -> None:
        """Writes `bpe.json` atomically, so concurrent readers never see half a file."""
        paths.write_text(path, self.vocab_text())

    def to_json(self) -> str:
        """A `tokenizer.json` (HF tokenizers / transformers' fast tokenizers) that adds
        <|startoftext|> ... <|endoftext|> as `encode` does."""
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.post_processor = processors.TemplateProcessing(
            single='<|startoftext|> $A <|endoftext|>',
            special_tokens=[('<|startoftext|>', self.sot_id), ('<|endoftext|>', self.eot_id)])
        return tok.to_str()

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens, no padding."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        """int32 [n, context_length]: <|startoftext|> tokens <|endoftext|>, then <|pad|>."""
        return pack_ids(self.ids(texts), context_length, self.sot_id, self.eot_id, self.pad_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of one row of ids, special tokens dropped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
