"""Tests of the CLIP BPE (against a pure-Python reference of CLIP's algorithm) and WordPiece."""

import gzip
import os
import re
import unicodedata
from importlib import resources

import numpy as np
import pytest

from mmjax.data import tokenizers
from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer

# --- A small reference implementation of CLIP's tokenizer, written from its description. ---

SPECIAL_TOKENS = ('<|startoftext|>', '<|endoftext|>')
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def reference_byte_chars() -> dict[int, str]:
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table, shifted = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    order = keep + [b for b in range(256) if b not in keep]
    return {b: table[b] for b in order}


def reference_pieces(text: str) -> list[str]:
    """CLIP's regex, spelt out with unicode categories: specials, contractions, L+, N, other+."""
    kind = lambda c: 'space' if c.isspace() else unicodedata.category(c)[0]
    pieces, i = [], 0
    while i < len(text):
        match = next((s for s in SPECIAL_TOKENS + CONTRACTIONS if text.startswith(s, i)), None)
        if match:
            pieces.append(match)
            i += len(match)
        elif kind(text[i]) == 'space':
            i += 1
        elif kind(text[i]) == 'N':
            pieces.append(text[i])
            i += 1
        else:
            first, j = kind(text[i]), i + 1
            same = (lambda c: kind(c) == 'L') if first == 'L' else (
                lambda c: kind(c) not in ('L', 'N', 'space'))
            while j < len(text) and same(text[j]):
                j += 1
            pieces.append(text[i:j])
            i = j
    return pieces


class ReferenceClip:
    """Greedy lowest-rank merge loop over the same merges file, as in OpenAI's CLIP."""

    def __init__(self):
        data = resources.files('mmjax.data').joinpath('assets', 'bpe_simple_vocab_16e6.txt.gz')
        lines = gzip.decompress(data.read_bytes()).decode('utf-8').split('\n')
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        self.byte_chars = reference_byte_chars()
        vocab = list(self.byte_chars.values())
        vocab += [v + '</w>' for v in vocab] + [''.join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: r for r, m in enumerate(merges)}

    def bpe(self, piece: str) -> list[str]:
        if piece in SPECIAL_TOKENS:
            return [piece]
        word = list(piece[:-1]) + [piece[-1] + '</w>']
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float('inf')))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str, context_length: int) -> list[int]:
        text = unicodedata.normalize('NFC', text)  # ftfy.fix_text normalises to NFC.
        text = re.sub(r'\s+', ' ', text).strip().lower()
        ids = []
        for piece in reference_pieces(text):
            if piece not in SPECIAL_TOKENS:
                piece = ''.join(self.byte_chars[b] for b in piece.encode('utf-8'))
            ids += [self.ids[t] for t in self.bpe(piece)]
        ids = [self.ids['<|startoftext|>']] + ids[:context_length - 2] + [self.ids['<|endoftext|>']]
        return ids + [0] * (context_length - len(ids))


CLIP_TEXTS = [
    '',
    'a photo of a cat',
    'A photo of the digit seven.',
    'Hello, World!!! How are you???',
    "don't stop, it's fine; they're here, we've won, I'm sure, you'll see, he'd go",
    "O'Neil's DOG'S bone",
    "'tis the season 'twas",
    'The year 2021 had 365 days and 3.14159 is pi; 1,000,000 dollars!',
    '   lots\tof \n whitespace\r\n  between   words   ',
    'café naïve résumé Straße façade',
    'e\u0301 combining accent vs precomposed \u00e9',
    '日本語のテキストです。',
    '中文字符和标点，符号！',
    'Καλημέρα κόσμε',
    'Привет, мир',
    'مرحبا بالعالم',
    'emoji 🤗🚀 and ❤️ hearts',
    '<html>&amp; tags</html> and email@example.com',
    'C++ and C# and F# -- em—dash – en-dash',
    'snake_case camelCase kebab-case SCREAMING_CASE',
    'hello <|endoftext|> world <|startoftext|> again',
    '$100 €50 £20 ¥1000 ₹500 50% off!!!',
    'https://example.com/path?query=1&other=two#frag',
    '#hashtag @mention ~tilde ^caret `backtick` |pipe|',
    'supercalifragilisticexpialidocious antidisestablishmentarianism',
    'a' * 300,
    'ThE QuIcK BrOwN FoX JuMpS OvEr ThE LaZy DoG',
    '½ ¾ ² ³ Ⅻ ① numerals',
    'tab\tseparated\tvalues\there',
    ' '.join(['word'] * 100) + ' the end',
]


@pytest.fixture(scope='module')
def clip():
    return ClipTokenizer()


@pytest.fixture(scope='module')
def reference():
    return ReferenceClip()


def test_clip_known_facts(clip):
    assert clip.vocab_size == 49408
    assert (clip.sot_id, clip.eot_id, clip.pad_id) == (49406, 49407, 0)
    # Widely published CLIP ids of this caption.
    np.testing.assert_array_equal(
        clip.encode(['a photo of a cat'], 9)[0], [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0])


@pytest.mark.parametrize('context_length', [77, 8])
def test_clip_matches_reference(clip, reference, context_length):
    got = clip.encode(CLIP_TEXTS, context_length)
    assert got.dtype == np.int32 and got.shape == (len(CLIP_TEXTS), context_length)
    for text, row in zip(CLIP_TEXTS, got):
        assert row.tolist() == reference.encode(text, context_length), text


def test_clip_truncation_keeps_eot_last(clip):
    ids = clip.encode(['word ' * 200, 'short'], 16)
    assert ids[0, 0] == clip.sot_id and ids[0, -1] == clip.eot_id
    assert (ids[0] != 0).all()
    # The text tower pools at argmax(ids): the EOT position, also when padded.
    assert ids[1].argmax() == 2 and ids[1, 3:].sum() == 0


def test_clip_decode(clip):
    assert clip.decode(clip.encode(['A photo of the digit  SEVEN'], 16)[0]) == (
        'a photo of the digit seven')


# --- WordPiece ---

CORPUS = [
    'the cat sat on the mat.', 'the dog sat on the log.', 'cats and dogs are friends.',
    'a quick brown fox jumps over the lazy dog.', 'the mat was red and the log was brown.',
] * 20


@pytest.fixture(scope='module')
def wordpiece():
    return WordPieceTokenizer.train(CORPUS, vocab_size=120)


def test_wordpiece_special_ids(wordpiece):
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id,
            wordpiece.mask_id) == (0, 1, 2, 3, 4)
    assert wordpiece.special_ids == (0, 1, 2, 3, 4)
    assert wordpiece.vocab_size <= 120


def test_wordpiece_round_trip_and_padding(wordpiece):
    ids = wordpiece.encode(['The Cat sat on the MAT', 'dogs'], 12)
    assert ids.dtype == np.int32 and ids.shape == (2, 12)
    assert ids[0, 0] == wordpiece.cls_id
    assert wordpiece.decode(ids[0]) == 'the cat sat on the mat'
    assert wordpiece.decode(ids[1]) == 'dogs'
    sep = int(np.flatnonzero(ids[1] == wordpiece.sep_id)[0])
    assert (ids[1, sep + 1:] == 0).all() and wordpiece.unk_id not in ids[0]


def test_wordpiece_truncation_keeps_sep_last(wordpiece):
    ids = wordpiece.encode([' '.join(['the cat sat on the mat'] * 10)], 9)[0]
    assert ids[0] == wordpiece.cls_id and ids[-1] == wordpiece.sep_id
    assert wordpiece.sep_id not in ids[:-1] and 0 not in ids


def test_wordpiece_from_bert_vocab(tmp_path):
    tokens = ['[PAD]', '[unused0]', '[UNK]', '[CLS]', '[SEP]', '[MASK]',
              'the', 'cat', '##s', 'sat', 'on', 'mat', '.']
    path = tmp_path / 'vocab.txt'
    path.write_text(''.join(t + '\n' for t in tokens), encoding='utf-8')
    tok = WordPieceTokenizer.from_vocab(str(path))
    assert tok.special_ids == (0, 2, 3, 4, 5) and tok.vocab_size == len(tokens)
    ids = tok.encode(['The cats sat on the mat. Zebra'], 13)[0]
    assert ids.tolist() == [3, 6, 7, 8, 9, 10, 6, 11, 12, 2, 4, 0, 0]
    tok.save_vocab(str(tmp_path / 'copy.txt'))
    assert (tmp_path / 'copy.txt').read_text(encoding='utf-8') == path.read_text(encoding='utf-8')


def test_wordpiece_rejects_vocab_without_pad_at_zero(tmp_path):
    path = tmp_path / 'vocab.txt'
    path.write_text('[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\nthe\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r'\[PAD\] at id 0'):
        WordPieceTokenizer.from_vocab(str(path))


def test_wordpiece_save_and_load_round_trip(wordpiece, tmp_path):
    wordpiece.save_vocab(str(tmp_path / 'v.txt'))
    loaded = WordPieceTokenizer.from_vocab(str(tmp_path / 'v.txt'))
    texts = ['the quick brown fox', 'cats on mats']
    np.testing.assert_array_equal(loaded.encode(texts, 10), wordpiece.encode(texts, 10))


def test_get_tokenizer(tmp_path):
    assert isinstance(tokenizers.get_tokenizer('clip_bpe', str(tmp_path)), ClipTokenizer)
    with pytest.raises(ValueError, match='clip_bpe, wordpiece'):
        tokenizers.get_tokenizer('sentencepiece', str(tmp_path))
    first = tokenizers.get_tokenizer('wordpiece', str(tmp_path))
    cache = tmp_path / 'wordpiece_vocab_8192.txt'
    assert first.vocab_size == 8192 and cache.exists()
    stamp = os.stat(cache).st_mtime_ns
    second = tokenizers.get_tokenizer('wordpiece', str(tmp_path))
    assert os.stat(cache).st_mtime_ns == stamp
    text = ['To be, or not to be, that is the question.']
    np.testing.assert_array_equal(first.encode(text, 16), second.encode(text, 16))
    assert first.unk_id not in first.encode(text, 16)
