"""The byte-level BPE learned from the data: its merges, its encoding, its place in the run."""

import collections
import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from mmjax.data.bpe import BPE_SPECIALS, BpeTokenizer, learn_bpe, pre_tokenizer
from mmjax.data.subwords import bytes_to_unicode

TEXTS = ["To be, or not to be: that is the question.", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "def f(x): return x ** 2  # Python 3.12",
         "naïve café, Ünïcode 東京 and an emoji 🎭 too", "    indented\tand\ttabbed  lines\n\n"] * 3


def naive_merges(texts, vocab_size):
    """BPE by its definition: recount every adjacent pair after each merge, take the most
    frequent (equal counts: the pair that sorts first), merge it everywhere."""
    words = collections.Counter(w for t in texts for w, _ in pre_tokenizer().pre_tokenize_str(t))
    split = {w: list(w) for w in words}
    tokens = len(BPE_SPECIALS) + 256
    known, merges = set(bytes_to_unicode().values()), []
    while tokens < vocab_size:
        pairs = collections.Counter()
        for w, symbols in split.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            tokens += 1
        for w, symbols in split.items():
            out, i = [], 0
            while i < len(symbols):
                if tuple(symbols[i:i + 2]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            split[w] = out
    return merges


def naive_ids(tokenizer, text):
    """Ids by applying the learned merges in rank order to each pre-tokenised word."""
    rank = {m: r for r, m in enumerate(tokenizer.merges)}
    vocab = {t: i for i, t in enumerate(tokenizer.tokens)}
    ids = []
    for word, _ in pre_tokenizer().pre_tokenize_str(text):
        symbols = list(word)
        while len(symbols) > 1:
            pairs = [(rank.get(p, len(rank)), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
            r, i = min(pairs)
            if r == len(rank):
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        ids += [vocab[s] for s in symbols]
    return ids


def test_learned_merges_are_bpe_by_definition_and_ignore_the_order_of_the_texts():
    tokens, merges = learn_bpe(TEXTS, 400)
    assert merges == naive_merges(TEXTS, 400)
    assert len(tokens) == 400 and tuple(tokens[:4]) == BPE_SPECIALS
    assert tokens[4:260] == list(bytes_to_unicode().values())
    shuffled = TEXTS[:]
    random.Random(0).shuffle(shuffled)
    assert learn_bpe(shuffled, 400) == (tokens, merges)


def test_encoding_applies_the_merges_by_rank_and_decodes_to_the_same_bytes():
    tok = BpeTokenizer.train(TEXTS, 400)
    unseen = ["Whose 'tis unseen: Ωmega 😀, tabs\tand  spaces.", "x ** 3 != y"]
    for text in TEXTS[:6] + unseen:
        ids = tok.ids([text])[0]
        assert ids == naive_ids(tok, text), text
        assert tok.decode(ids) == text   # byte-level: nothing is unknown or lost
    row = tok.encode(["To be"], 8)[0]
    assert row[0] == tok.sot_id and list(row[1:]).index(tok.eot_id) == len(tok.ids(["To be"])[0])
    assert tok.pad_id == 0 and row[-1] == 0 and tok.mask_id in tok.special_ids


def test_vocabulary_agrees_with_hf_bpe_trainer_up_to_ties():
    """HF's trainer (same split, same byte alphabet) breaks equal counts in its own order, so
    only the tokens chosen among ties at the end may differ."""
    import pydoc_data.topics
    texts = list(pydoc_data.topics.topics.values())
    ours = BpeTokenizer.train(texts, 1500)
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizer()
    hf.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1500, special_tokens=list(BPE_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    shared = set(ours.tokens) & set(hf.get_vocab())
    assert len(shared) >= 0.97 * 1500, len(shared)


def test_save_and_load_round_trip_and_autotokenizer_tokenises_alike(tmp_path):
    from transformers import AutoTokenizer

    from mmjax.convert import hf_gpt2
    tok = BpeTokenizer.train(TEXTS, 400)
    tok.save_vocab(str(tmp_path / "bpe.json"))
    again = BpeTokenizer.from_vocab(str(tmp_path / "bpe.json"))
    assert again.vocab_text() == tok.vocab_text() and again.ids(TEXTS) == tok.ids(TEXTS)
    hf_gpt2.save_tokenizer(str(tmp_path), tok, 32)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    assert theirs(TEXTS, add_special_tokens=False)["input_ids"] == tok.ids(TEXTS)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (1, 2, 0)
    with pytest.raises(ValueError, match="starts with"):
        BpeTokenizer(tok.tokens[1:], tok.merges)


def test_the_run_keeps_its_bpe_in_the_workdir_and_refuses_another_kind(tmp_path, monkeypatch):
    from mmjax.config import defaults
    from mmjax.data import tokenizers, vocab
    from mmjax.errors import ConfigError
    trained = BpeTokenizer.train(TEXTS, 300)
    calls = []
    monkeypatch.setattr(tokenizers, "get_tokenizer", lambda *a: calls.append(a) or trained)
    monkeypatch.setattr(vocab, "get_tokenizer", tokenizers.get_tokenizer)
    config = defaults()
    config.data.update(tokenizer="bpe", train="prose")
    first = vocab.run_tokenizer(config, str(tmp_path / "data"), str(tmp_path))
    assert (tmp_path / "bpe.json").read_text() == trained.vocab_text() and len(calls) == 1
    monkeypatch.setattr(vocab, "get_tokenizer", lambda *a: pytest.fail("re-trained"))
    assert vocab.run_tokenizer(config, "elsewhere", str(tmp_path)).vocab_text() == first.vocab_text()
    assert "bpe (300 tokens, bpe.json sha256" in vocab.describe(first)
    config.data.tokenizer = "wordpiece"
    with pytest.raises(ConfigError, match="keep the run's data.tokenizer"):
        vocab.run_tokenizer(config, "elsewhere", str(tmp_path))
