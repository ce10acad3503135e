"""Text tokenizers: CLIP's byte-level BPE and a BERT-style WordPiece, both on HF `tokenizers`
(a byte-level BPE learned from the data is in data/bpe.py)."""

from __future__ import annotations

import collections
import functools
import gzip
from collections.abc import Iterable, Sequence
from importlib import resources

import numpy as np
from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors)

from mmjax import paths
from mmjax.data.subwords import bytes_to_unicode, pack_ids, pair_merges

CLIP_MERGES_FILE = 'bpe_simple_vocab_16e6.txt.gz'
CLIP_NUM_MERGES = 49152 - 256 - 2
# CLIP's pre-tokenisation regex: special tokens, English contractions, letter runs,
# single digits, runs of anything else that is not whitespace.
CLIP_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
WORDPIECE_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
TOKENIZER_NAMES = ('clip_bpe', 'wordpiece', 'bpe')
BPE_CACHE_SIZE = 8192
WORDPIECE_CACHE_SIZE = 8192


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab (bytes, bytes+'</w>', merges, specials) and merge list."""
    data = resources.files('mmjax.data').joinpath('assets', CLIP_MERGES_FILE).read_bytes()
    lines = gzip.decompress(data).decode('utf-8').split('\n')
    merges = [tuple(line.split()) for line in lines[1:CLIP_NUM_MERGES + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + '</w>' for t in tokens]
    tokens += [a + b for a, b in merges]
    tokens += ['<|startoftext|>', '<|endoftext|>']
    return {t: i for i, t in enumerate(tokens)}, merges


class ClipTokenizer:
    """CLIP-compatible BPE: 49,408 tokens, SOT 49406, EOT 49407, padding 0."""

    def __init__(self):
        vocab, merges = _clip_vocab_and_merges()
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix='</w>'))
        # CLIP: ftfy (which NFC-normalises), collapse whitespace, strip, lower-case.
        tok.normalizer = normalizers.Sequence([
            normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '),
            normalizers.Strip(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior='removed', invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.Sequence([decoders.Replace('</w>', 'Ġ'), decoders.ByteLevel()])
        tok.add_special_tokens(['<|startoftext|>', '<|endoftext|>'])
        self._tok = tok
        self.vocab_size = len(vocab)
        self.sot_id = vocab['<|startoftext|>']
        self.eot_id = vocab['<|endoftext|>']
        self.pad_id = 0
        self.bos_id, self.eos_id = self.sot_id, self.eot_id

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens, no padding."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        """int32 [n, context_length]: SOT tokens EOT, then zeros."""
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return pack_ids([e.ids for e in encodings], context_length, self.sot_id, self.eot_id,
                        self.pad_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of one row of ids, special tokens and padding dropped."""
        ids = [int(i) for i in ids if i not in (self.pad_id, self.sot_id, self.eot_id)]
        return self._tok.decode(ids, skip_special_tokens=True).strip()


def learn_wordpiece(word_counts: dict[str, int], vocab_size: int, vocab: set[str]) -> set[str]:
    """`vocab` grown to `vocab_size` tokens as HF's WordPieceTrainer grows it: every character
    (word-initial `c`, inside a word `##c`), then merges of the adjacent pair that occurs most
    often in the counted words (`a` + `##b` -> `ab`, `##a` + `##b` -> `##ab`). Deterministic: the
    words are read in sorted order and equal counts go to the pair that sorts first."""
    vocab = set(vocab)
    words, freq = [], []
    for word, count in sorted(word_counts.items()):
        words.append([word[0]] + ['##' + c for c in word[1:]])
        freq.append(count)
        vocab.update(words[-1])
        vocab.update(word)
    if len(vocab) < vocab_size:
        for _, _, new in pair_merges(words, freq, lambda a, b: a + b.removeprefix('##')):
            vocab.add(new)
            if len(vocab) >= vocab_size:
                break
    return vocab


class WordPieceTokenizer:
    """BERT-style lower-cased WordPiece; [PAD] is id 0, as the models assume."""

    vocab_file = 'vocab.txt'

    def __init__(self, vocab: dict[str, int]):
        missing = [t for t in WORDPIECE_SPECIALS if t not in vocab]
        if missing:
            raise ValueError(f'WordPiece vocab lacks the special tokens {missing}')
        if vocab['[PAD]'] != 0:
            raise ValueError(f"WordPiece vocab must have [PAD] at id 0, found {vocab['[PAD]']}")
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token='[UNK]'))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.add_special_tokens(list(WORDPIECE_SPECIALS))
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in WORDPIECE_SPECIALS)
        self.special_ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
        self.bos_id, self.eos_id = self.cls_id, self.sep_id
        self.eot_id = self.sep_id   # end-of-text: where a text tower with pool='eot' reads

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens, no padding."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> WordPieceTokenizer:
        """Learns a vocab of `vocab_size` from `texts`; the specials get ids 0..4, the other
        tokens follow in sorted order. The same texts give the same vocab on any host and run
        (HF's WordPieceTrainer breaks count ties in hash-map order, so its vocabularies differ
        run to run, huggingface/tokenizers#1794: `learn_wordpiece` is its algorithm, with ties
        broken by the tokens' text)."""
        normalizer = normalizers.BertNormalizer(lowercase=True)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        counts = collections.Counter()
        for text in texts:
            counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        learned = learn_wordpiece(counts, vocab_size, set(WORDPIECE_SPECIALS)) - set(WORDPIECE_SPECIALS)
        return cls({t: i for i, t in enumerate(WORDPIECE_SPECIALS + tuple(sorted(learned)))})

    @classmethod
    def from_vocab(cls, path: str) -> WordPieceTokenizer:
        """Loads a BERT `vocab.txt` (one token a line, id = line number)."""
        tokens = paths.resolve(path).read_text(encoding='utf-8').split('\n')
        tokens = tokens[:-1] if tokens[-1] == '' else tokens  # the last line's newline
        return cls({t: i for i, t in enumerate(tokens)})

    def save_vocab(self, path: str) -> None:
        """Writes `vocab.txt` atomically, so concurrent readers never see half a file."""
        paths.write_text(path, self.vocab_text())

    def vocab_text(self) -> str:
        """The vocabulary as `vocab.txt` holds it: one token a line, line number = id."""
        vocab = self._tok.get_vocab()
        return ''.join(t + '\n' for t in sorted(vocab, key=vocab.get))

    def to_json(self) -> str:
        """This tokenizer as a `tokenizer.json` (HF tokenizers / transformers' fast tokenizers)
        that adds [CLS] ... [SEP] as `encode` does."""
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.post_processor = processors.TemplateProcessing(
            single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1',
            special_tokens=[('[CLS]', self.cls_id), ('[SEP]', self.sep_id)])
        return tok.to_str()

    def encode(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """int32 [n, max_length]: [CLS] tokens [SEP], then [PAD]."""
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return pack_ids([e.ids for e in encodings], max_length, self.cls_id, self.sep_id,
                        self.pad_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of one row of ids, special tokens dropped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def get_tokenizer(name: str, data_dir: str, corpus: Sequence[str] = ('prose',),
                  vocab_file: str = ''):
    """'clip_bpe'; 'wordpiece': read from `vocab_file` if given (a pretrained BERT's vocab.txt),
    else trained once on the train text of the `corpus` datasets (`config.data.tokenizer_data`,
    else the training datasets) and cached in data_dir; 'bpe': a byte-level BPE (data/bpe.py)
    trained and cached the same way.

    A run asks `data.vocab.run_tokenizer`, which calls this on first use only: after that the
    run's own copy (WORKDIR/vocab.txt or WORKDIR/bpe.json) is its tokenizer, whatever the data
    dir holds.
    """
    if name == 'clip_bpe':
        return ClipTokenizer()
    if name not in TOKENIZER_NAMES:
        raise ValueError(f'Unknown tokenizer {name!r}; valid choices: {", ".join(TOKENIZER_NAMES)}')
    if vocab_file:
        if name != 'wordpiece':
            raise ValueError(f"data.vocab_file={vocab_file!r} is a BERT vocab.txt, read by "
                             f"data.tokenizer='wordpiece' only; leave it empty for {name!r}")
        if not paths.resolve(vocab_file).is_file():
            raise FileNotFoundError(f'data.vocab_file={vocab_file!r} not found: give the path of '
                                    f'a BERT vocab.txt, or leave it empty to train one')
        return WordPieceTokenizer.from_vocab(vocab_file)
    from mmjax.data import bpe, builders, sources  # Lazy: pulls in tensorflow_datasets.
    kind = WordPieceTokenizer if name == 'wordpiece' else bpe.BpeTokenizer
    corpus = tuple(corpus)
    suffix = '' if corpus == ('prose',) else '_' + '+'.join(corpus)
    size = WORDPIECE_CACHE_SIZE if name == 'wordpiece' else BPE_CACHE_SIZE
    stem = 'wordpiece_vocab' if name == 'wordpiece' else 'bpe'
    path = paths.join(builders.resolve_data_dir(data_dir),
                      f'{stem}_{size}{suffix}.{kind.vocab_file.rsplit(".", 1)[1]}')
    if not paths.resolve(path).exists():
        texts = [t for n in corpus for t in sources.get(n, data_dir).texts(data_dir, 'train')]
        kind.train(texts, size).save_vocab(path)
    return kind.from_vocab(path)
