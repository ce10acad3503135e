"""Next-sentence prediction: BertForPreTraining imported and exported against transformers; the
pair rows against a construction written here from the documents; their determinism on
resume and across process counts; the masker around [CLS]/[SEP]; the sharded loss; the
evaluator; and (acceptance) the smoke run's bar."""

import functools
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import pytest

from mmjax.convert import torch_io

torch = torch_io.import_torch()
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import export, sharding, tasks  # noqa: E402
from mmjax.convert import hf_bert, layout  # noqa: E402
from mmjax.data import pipeline, sources, transforms  # noqa: E402
from mmjax.data.tokenizers import WORDPIECE_SPECIALS, WordPieceTokenizer  # noqa: E402
from mmjax.registry import Registry  # noqa: E402
from mmjax.tasks.mlm import masker  # noqa: E402
from mmjax.tasks.mlm_nsp import batch_spec  # noqa: E402
from mmjax.train.setup import setup  # noqa: E402
from mmjax.train.step import Traced, make_loss_fn  # noqa: E402
from tiny_configs import tiny_config  # noqa: E402

TOL = 1e-4


def _jiggle(module, seed=0):
    """Random biases and LayerNorms too (they init to constants)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _inputs(vocab, length, n=3, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (n, length))
    tokens[0, length - 5:], tokens[2, 7:] = 0, 0   # padding, masked out of attention on both sides
    types = (np.arange(length)[None] >= rng.integers(2, 6, (n, 1))).astype(np.int64)
    return tokens, types * (tokens != 0)


def _theirs(model, tokens, types):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens), token_type_ids=torch.from_numpy(types),
                    attention_mask=torch.from_numpy(tokens != 0).long())
    return out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()


def _ours(config, params, tokens, types):
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    mlm, nsp = jax.jit(tasks.get(config, None).build_model().apply)({"params": params}, tokens,
                                                                    positions, types)
    return np.asarray(mlm), np.asarray(nsp)


def _assert_close(ours, theirs):
    for name, a, b in zip(("MLM logits", "NSP logits"), ours, theirs):
        assert a.shape == b.shape, name
        assert np.abs(a - b).max() <= TOL * np.abs(b).max(), (name, np.abs(a - b).max())


def test_bert_for_pretraining_import_gives_its_mlm_and_nsp_logits():
    torch.manual_seed(0)
    hf_config = BertConfig(vocab_size=150, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, max_position_embeddings=24)
    reference = _jiggle(BertForPreTraining(hf_config))
    tensors = torch_io.to_numpy(reference.state_dict())
    base = config_lib.load("configs/smoke_nsp.py", ["--config.model.scan=True"])
    config, params, fresh = export.from_reference("hf_bert", hf_config.to_dict(), tensors, base)
    assert fresh == [] and config.task == "mlm+nsp"
    tokens, types = _inputs(150, 24)
    _assert_close(_ours(config, params, tokens, types), _theirs(reference, tokens, types))
    ref_config, back = export.to_reference("hf_bert", config, params)   # ... and back, unchanged
    assert ref_config["architectures"] == ["BertForPreTraining"]
    assert all(np.array_equal(back[k], tensors[k]) for k in back)
    assert set(tensors) - set(back) == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    # BertForMaskedLM has neither pooler nor NSP head: they start fresh; an 'mlm' base drops them.
    masked_lm = torch_io.to_numpy(BertForMaskedLM(hf_config).state_dict())
    _, _, fresh = export.from_reference("hf_bert", hf_config.to_dict(), masked_lm, base)
    assert fresh == ["nsp_head/nsp/bias", "nsp_head/nsp/kernel", "nsp_head/pooler/bias",
                     "nsp_head/pooler/kernel"]
    mlm = config_lib.load("configs/smoke_mlm.py")
    config, params, fresh = export.from_reference("hf_bert", hf_config.to_dict(), tensors, mlm)
    assert fresh == [] and "nsp_head" not in params


def test_mlm_nsp_export_loads_in_bert_for_pretraining(tmp_path):
    config = tiny_config("mlm+nsp")
    config.model.text.update(pre_norm=False, embed_norm=True, final_norm=False, type_vocab_size=2,
                             context_length=12, vocab_size=80)
    task = tasks.get(config, None)
    method, args = task.init_args()
    params = export.abstract_params(config)
    rng = np.random.default_rng(0)   # every parameter random: a swapped or dropped one shows
    params = layout.unflatten({n: 0.1 * rng.standard_normal(s.shape).astype(s.dtype)
                               for n, s in params.items()})
    hf_bert.save(str(tmp_path), *export.to_reference("hf_bert", config, params), config)
    reference, info = BertForPreTraining.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not any(info.values()), info   # no missing, unexpected or mismatched tensors
    tokens, types = _inputs(80, 12, n=4, seed=2)
    _assert_close(_ours(config, params, tokens, types), _theirs(reference.eval(), tokens, types))


# --- sentence pairs --------------------------------------------------------------------------
# Toy documents whose every word names its document and place ("d3w7"), so a row says where
# its A and B came from. Sentences end in "." (a token of its own); one document has none.
def _documents(seed=0, count=12):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(count):
        words = [f"d{d}w{i}" for i in range(int(rng.integers(5, 40)))]
        if d != 4:   # document 4: no sentence ends, cut at any word
            for i in np.flatnonzero(rng.random(len(words)) < 0.25):
                words[i] += "."
        docs.append(words)
    return docs


DOCS = _documents()
VOCAB = {t: i for i, t in enumerate([*WORDPIECE_SPECIALS, ".",
                                     *sorted({w.rstrip(".") for doc in DOCS for w in doc})])}
TOKENIZER = WordPieceTokenizer(VOCAB)
LENGTH = 20


class _Documents(sources.Dataset):
    features = ("text",)

    def source(self, data_dir, split):
        return [{"text": " ".join(doc).encode()} for doc in DOCS]

    def example_ops(self, train):
        return [transforms.DecodeText()]


@pytest.fixture
def documents(monkeypatch):
    registry = Registry("dataset", {})
    registry.register("nsp_documents")(_Documents)
    monkeypatch.setattr(sources, "DATASETS", registry)
    return "nsp_documents"


def _is_cut(doc, c):
    """Written from the rule: after a word ending a sentence, or anywhere in a text without one."""
    ends = any(w.endswith(".") for w in doc[:-1])
    return 0 < c < len(doc) and (doc[c - 1].endswith(".") or not ends)


def _ids(words):
    out = []
    for w in words:
        out += [VOCAB[w.rstrip(".")]] + ([VOCAB["."]] if w.endswith(".") else [])
    return out


def _expected_row(a_words, b_words):
    """[CLS] A [SEP] B [SEP] from the words, cut to LENGTH longest-first (A from its front, B from
    its back, B on a tie), padded; types 1 over B [SEP]."""
    a, b = _ids(a_words), _ids(b_words)
    while len(a) + len(b) > LENGTH - 3:
        a, b = (a[1:], b) if len(a) > len(b) else (a, b[:-1])
    row = [VOCAB["[CLS]"], *a, VOCAB["[SEP]"], *b, VOCAB["[SEP]"]]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    pad = LENGTH - len(row)
    return np.array(row + [0] * pad), np.array(types + [0] * pad)


def _where(token):
    """(document, word) of a word token."""
    name = next(t for t, i in VOCAB.items() if i == token)
    d, w = re.fullmatch(r"d(\d+)w(\d+)", name).groups()
    return int(d), int(w)


def _check_row(tokens, types, is_random):
    """The row against one built here from the documents its first and last words name.
    Returns whether it was cut to fit."""
    sep = np.flatnonzero(tokens == VOCAB["[SEP]"])
    assert tokens[0] == VOCAB["[CLS]"] and len(sep) == 2
    a_ids, b_ids = tokens[1:sep[0]], tokens[sep[0] + 1:sep[1]]
    d, last = _where(next(t for t in a_ids[::-1] if t != VOCAB["."]))
    d2, start = _where(b_ids[0])
    doc, cut = DOCS[d], last + 1
    assert _is_cut(doc, cut)
    if is_random:   # B from another document, from a cut of it, as many words as A's rest
        assert d2 != d and _is_cut(DOCS[d2], start)
        need = len(doc) - cut
        fits = [c for c in range(len(DOCS[d2])) if _is_cut(DOCS[d2], c) and len(DOCS[d2]) - c >= need]
        assert fits or start == min(c for c in range(len(DOCS[d2])) if _is_cut(DOCS[d2], c))
        b_words = DOCS[d2][start:start + need]
    else:           # B really follows A
        assert (d2, start) == (d, cut)
        b_words = doc[cut:]
    want_tokens, want_types = _expected_row(doc[:cut], b_words)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(types, want_types)
    return len(_ids(doc[:cut])) + len(_ids(b_words)) > LENGTH - 3


def _batches(name, count, *, seed=0, process_count=1, start=0, batch_size=16):
    """`count` global batches from batch `start`, each the processes' blocks put together."""
    per = []
    for p in range(process_count):
        it = pipeline.batches(name, data_dir=None, split="train", spec=batch_spec(LENGTH),
                              tokenizer=TOKENIZER, batch_size=batch_size, seed=seed,
                              process_index=p, process_count=process_count)
        if start:
            it.set_state(json.dumps({**json.loads(it.get_state()), "batches_read": start}).encode())
        per.append([next(it) for _ in range(count)])
    keys = ("text", "token_types", "is_random")
    return [{k: np.concatenate([per[p][i][k] for p in range(process_count)]) for k in keys}
            for i in range(count)]


def test_pair_rows_match_the_documents_and_are_the_same_on_resume_and_any_process_count(documents):
    batches = _batches(documents, 16)   # 256 pairs: 21 passes over the 12 documents
    cut_to_fit = [_check_row(t, ty, r) for b in batches
                  for t, ty, r in zip(b["text"], b["token_types"], b["is_random"])]
    labels = np.concatenate([b["is_random"] for b in batches])
    assert 0.4 < labels.mean() < 0.6
    assert 0.1 < np.mean(cut_to_fit) < 0.9   # both kinds of row are checked
    # A pure function of (seed, position in the stream): two processes, and a resumed read.
    for again in (_batches(documents, 4, process_count=2, start=12), _batches(documents, 4, start=12)):
        for a, b in zip(again, batches[12:]):
            assert all(np.array_equal(a[k], b[k]) for k in a)
    other_seed = _batches(documents, 2, seed=1)
    assert not np.array_equal(other_seed[0]["text"], batches[0]["text"])
    # Evaluation: one pair per record, drawn from its index.
    rows = [b for b, valid in pipeline.eval_batches(documents, data_dir=None, split="test",
                                                    spec=batch_spec(LENGTH), tokenizer=TOKENIZER,
                                                    batch_size=5)]
    for b in rows:
        for t, ty, r in zip(b["text"], b["token_types"], b["is_random"]):
            _check_row(t, ty, r)
    assert [b["_index"].tolist() for b in rows][:2] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_the_masker_leaves_cls_and_sep_alone(documents):
    batch = _batches(documents, 1, batch_size=64)[0]
    config = tiny_config("mlm+nsp")
    config.model.mlm.update(max_predictions=6, mask_rate=0.5)
    special = np.isin(batch["text"], [VOCAB["[CLS]"], VOCAB["[SEP]"], VOCAB["[PAD]"]])
    mask = jax.jit(masker(config, TOKENIZER))
    for seed in range(4):
        masked = jax.device_get(mask(jax.random.PRNGKey(seed), batch["text"]))
        chosen = np.take_along_axis(special, masked["positions"], axis=1)
        assert not chosen[masked["weights"] > 0].any()
        np.testing.assert_array_equal(masked["inputs"][special], batch["text"][special])
        assert masked["weights"].sum() > 64 * 4


def _pairs_config():
    config = tiny_config("mlm+nsp")
    config.model.text.update(pre_norm=False, embed_norm=True, final_norm=False, type_vocab_size=2,
                             context_length=LENGTH, vocab_size=-(-len(VOCAB) // 8) * 8, depth=1)
    return config


@pytest.fixture(scope="module")
def one_device():
    """A tiny mlm+nsp run on one device over the toy documents' vocabulary, and its params."""
    run = setup(_pairs_config(), tokenizer=TOKENIZER, devices=jax.devices()[:1])
    return run, run.init_state().params


def _loss_and_grads(run, params, batch):
    fn = jax.value_and_grad(make_loss_fn(run.task.loss_terms(run.model, run.mesh)), has_aux=True)
    (loss, metrics), grads = Traced(
        jax.jit(fn, in_shardings=(run.state_shardings.params, sharding.batch_sharding(run.mesh), None)),
        run.mesh, run.rules)(params, sharding.global_batch(batch, run.mesh), jax.random.PRNGKey(0))
    return float(loss), jax.device_get(metrics), jax.device_get(grads)


def test_mlm_nsp_loss_on_a_3d_mesh_equals_one_device(documents, one_device):
    """8 simulated devices, data 2 x fsdp 2 x tensor 2: loss and grads within 1e-5."""
    batch = _batches(documents, 1)[0]
    run_1, params_1 = one_device
    config = _pairs_config()
    config.mesh.update(data=2, fsdp=2, tensor=2)
    run_8 = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:8])
    params_8 = jax.device_put(jax.device_get(params_1), run_8.state_shardings.params)
    assert len(params_8["nsp_head"]["pooler"]["kernel"].sharding.device_set) == 8
    loss_1, metrics_1, grads_1 = _loss_and_grads(run_1, params_1, batch)
    loss_8, metrics_8, grads_8 = _loss_and_grads(run_8, params_8, batch)
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    np.testing.assert_allclose(metrics_1["mlm_loss"] + metrics_1["nsp_loss"], loss_1, rtol=1e-6)
    for k in ("mlm_loss", "nsp_loss", "nsp_accuracy"):
        np.testing.assert_allclose(metrics_8[k], metrics_1[k], rtol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(grads_8), jax.tree.leaves(grads_1)):
        assert np.linalg.norm(a - b) <= 1e-5 * max(np.linalg.norm(b), 1e-30)


def test_nsp_evaluator_scores_the_model_on_every_record(documents, one_device):
    from mmjax.eval.nsp import NextSentence
    run, params = one_device
    spec = dict(type="nsp", dataset=documents, split="test", every=1, batch_size=4, seed=0,
                min_examples=0)
    got = NextSentence(run, spec, None).run(params)
    # The pairs the evaluator read, each record's own (seeded by its index), scored here.
    records = _Documents().source(None, "test")
    ops = pipeline.example_ops(_Documents(), batch_spec(LENGTH), None, False, records, TOKENIZER)
    pairs = [transforms.apply_one(ops, r, (0, i)) for i, r in enumerate(records)]
    tokens, types = np.stack([p["text"] for p in pairs]), np.stack([p["token_types"] for p in pairs])
    labels = np.array([p["is_random"] for p in pairs])
    logits = jax.jit(functools.partial(run.model.apply, method="nsp_logits"))(
        {"params": jax.device_get(params)}, tokens, types)
    assert got["n"] == len(DOCS)
    assert got["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == labels))
    assert got["random_fraction"] == pytest.approx(labels.mean())


@pytest.mark.acceptance   # ~16 min on 2 idle cores: run by hand (pytest -m acceptance)
def test_smoke_nsp_tells_following_sentences_from_random_ones(tmp_path):
    from conftest import run_mmjax
    workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
    run_mmjax("train", "--workdir", workdir, "--data_dir", data_dir, "--config", "configs/smoke_nsp.py",
              timeout=3600)   # 6,000 steps: ~16 min idle, longer on a busy machine
    records = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    final = [r for r in records if "eval/nsp/accuracy" in r][-1]
    print(final)
    assert final["eval/nsp/n"] >= 1000 and final["eval/nsp/accuracy"] >= 0.75, final
    assert final["eval/mlm/accuracy"] >= 2 * final["eval/mlm/baseline_accuracy"], final
