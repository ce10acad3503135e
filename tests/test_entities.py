"""The `tag` evaluator's entity scores (mmjax/eval/entities.py) equal seqeval's (CoNLL's conlleval
definition, its default mode) on random BIO and IOBES sequences, stray tags included."""

import numpy as np
import pytest
from seqeval.metrics import classification_report
from seqeval.metrics.sequence_labeling import get_entities

from mmjax.eval import entities

TYPES = ("PER", "LOC", "ORG")


def _sentences(rng, prefixes, n=300):
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in TYPES]
    weights = np.array([4.0] + [1.0] * (len(tags) - 1))
    return [list(rng.choice(tags, size=int(rng.integers(1, 12)), p=weights / weights.sum())) for _ in range(n)]


@pytest.mark.parametrize("prefixes", ["BI", "BIES"])
def test_spans_and_scores_equal_seqeval(prefixes):
    rng = np.random.default_rng(len(prefixes))
    true = _sentences(rng, prefixes)
    # Predictions: the true tags with a third of them replaced at random (stray I-, type changes).
    noise = [sum(_sentences(rng, prefixes, 12), [])[:len(sent)] for sent in true]
    pred = [[t if rng.random() > 0.33 else s for t, s in zip(sent, other)] for sent, other in zip(true, noise)]
    for sentence in true[:50]:
        assert entities.spans(sentence) == set(get_entities(sentence))
    ours = entities.scores(true, pred)
    theirs = classification_report(true, pred, output_dict=True, zero_division=0)
    for kind in TYPES:
        for metric in ("precision", "recall", "f1-score", "support"):
            key = f"{kind}/{metric.removesuffix('-score')}"
            assert ours[key] == pytest.approx(float(theirs[kind][metric]), abs=1e-12), key
    for avg in ("micro", "macro"):
        for metric in ("precision", "recall", "f1-score"):
            assert ours[f"{avg}/{metric.removesuffix('-score')}"] == pytest.approx(
                float(theirs[f"{avg} avg"][metric]), abs=1e-12), (avg, metric)


def test_hand_checked_sentence():
    true = [["B-PER", "I-PER", "O", "S-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG"]]
    with pytest.raises(ValueError):
        entities.scores(true, pred)
    assert entities.spans(["O", "I-ORG", "I-ORG", "B-ORG", "E-LOC"]) == {("ORG", 1, 2), ("ORG", 3, 3),
                                                                        ("LOC", 4, 4)}
    s = entities.scores(true, pred[:1])
    assert (s["PER/f1"], s["LOC/f1"], s["micro/precision"]) == (1.0, 1.0, 1.0)


def test_conll_lines_read_into_sentences():
    from mmjax.data import conll
    lines = ["-DOCSTART- -X- O O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O", "", "",
             "Peter NNP B-NP B-PER", "Blackburn NNP I-NP I-PER"]
    assert conll.read(lines) == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    with pytest.raises(ValueError, match="line 2 .*no tag column"):
        conll.read(["EU B-ORG", "rejects"])


def test_first_word_piece_carries_the_tag_as_transformers_word_ids_say(tmp_path):
    """Reference: transformers' fast tokenizer (the run's tokenizer.json) and its word_ids()."""
    from transformers import PreTrainedTokenizerFast
    from mmjax.data import conll
    from mmjax.data.tokenizers import WordPieceTokenizer
    vocab = WordPieceTokenizer.train(["peter blackburn rejects the german call to boycott lamb"] * 3, 40)
    words, tags = ["Peter", "Blackburn", "rejects", "German", "lamb", "zzz"], [1, 2, 0, 3, 0, 0]
    tokens, labels = conll.piece_labels(vocab, words, tags, 32)
    path = tmp_path / "tokenizer.json"
    path.write_text(vocab.to_json())
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="[PAD]")
    encoded = fast(words, is_split_into_words=True, padding="max_length", max_length=32)
    assert np.array_equal(tokens, encoded["input_ids"])
    ids, previous = encoded.word_ids(), None
    expected = [conll.IGNORE if w is None or w == previous else tags[w] for w, previous in zip(ids, [None] + ids)]
    assert np.array_equal(labels, expected)
    cut_tokens, cut = conll.piece_labels(vocab, words, tags, 6)   # room for whole words only
    assert cut_tokens[-1] == vocab.sep_id or vocab.sep_id in cut_tokens
    assert list(cut[cut != conll.IGNORE]) == tags[:int((cut != conll.IGNORE).sum())]
