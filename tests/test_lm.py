"""Causal LM: the document mask, the loss and the evaluator against numpy; GPT-2 export and
import against transformers; the sharded loss against one device's; the smoke run's bar."""

import json
import types

import jax
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import export, sharding, tasks
from mmjax.convert import hf_gpt2, layout
from mmjax.nn.attention import attention_mask
from mmjax.nn.lm import document_mask
from mmjax.train.setup import setup
from mmjax.train.step import Traced, make_loss_fn
from tiny_configs import tiny_config

EOS = 3
TOKENIZER = types.SimpleNamespace(vocab_size=64, pad_id=0, bos_id=2, eos_id=EOS, eot_id=EOS,
                                  special_ids=(0, 1, 2, 3))


def lm_config(context=16, tie=True, pack=True, pack_mask=True, scan=False, **text):
    c = tiny_config("lm")
    c.model.scan = scan
    c.model.text.update(causal=True, pool="eot", context_length=context, activation="gelu_tanh",
                        **text)
    c.model.lm.tie_embeddings = tie
    c.data.update(pack=pack, pack_mask=pack_mask)
    return c


def packed_tokens(b, length, seed=0):
    """Random rows [b, length]: a start token, then documents of 1-6 tokens each ending in EOS."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((b, length), np.int32)
    for row in rows:
        row[0] = TOKENIZER.bos_id
        i = 1
        while i < length:
            n = rng.integers(1, 7)
            row[i:i + n] = rng.integers(5, 64, min(n, length - i))
            if i + n < length:
                row[i + n] = EOS
            i += n + 1
    return rows


def numpy_document_mask(tokens):
    """Row by row: document index d goes up after each EOS; (i, j) allowed when j <= i and
    both sit in the same document."""
    b, n = tokens.shape
    out = np.zeros((b, 1, n, n), bool)
    for r in range(b):
        doc, d = [], 0
        for t in tokens[r]:
            doc.append(d)
            d += int(t == EOS)
        for i in range(n):
            for j in range(i + 1):
                out[r, 0, i, j] = doc[i] == doc[j]
    return out


def _init(config, seed=0, scale=None):
    """(task, model, params as numpy); `scale`: every parameter redrawn N(0, scale²) (logits
    with clear argmaxes), norms' scales around 1."""
    task = tasks.get(config, TOKENIZER)
    model = task.build_model()
    method, args = task.init_args()
    params = jax.device_get(model.init(jax.random.PRNGKey(seed), *args, method=method)["params"])
    params = jax.tree.map(np.asarray, __import__("flax").linen.unbox(params))
    if scale:
        rng = np.random.default_rng(seed)
        flat = layout.flatten(params)
        for name, x in flat.items():
            noise = rng.normal(0, scale, x.shape).astype(np.float32)
            flat[name] = 1 + noise if name.endswith("/scale") else noise
        params = layout.unflatten(flat)
    return task, model, params


def _logits(model, params, tokens, mask=None):
    return np.asarray(model.apply({"params": params}, tokens, mask, method="lm_logits"), np.float64)


def numpy_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_document_mask_matches_numpy_and_stops_attention_across_documents():
    tokens = packed_tokens(4, 16)
    got = attention_mask(document_mask(tokens, EOS), True, None, 16, 16)
    np.testing.assert_array_equal(np.asarray(got), numpy_document_mask(tokens))
    # a document's outputs do not move when another document's tokens change
    config = lm_config()
    _, model, params = _init(config, scale=0.3)
    row = np.array([[2, 7, 8, 9, EOS, 10, 11, 12, EOS, 13, 14, 15, 16, 17, 18, 19]], np.int32)
    changed = row.copy()
    changed[0, 1:4] = [20, 21, 22]          # the first document's words
    first_doc_end = 5
    with_mask = [_logits(model, params, r, document_mask(r, EOS)) for r in (row, changed)]
    np.testing.assert_allclose(with_mask[0][:, first_doc_end:], with_mask[1][:, first_doc_end:],
                               rtol=1e-6, atol=1e-6)
    without = [_logits(model, params, r) for r in (row, changed)]
    assert np.abs(without[0][:, first_doc_end:] - without[1][:, first_doc_end:]).max() > 1e-3


@pytest.mark.parametrize("pack,tie,z_loss", [(True, True, 0.0), (False, False, 1e-2)])
def test_lm_loss_equals_numpy_next_token_cross_entropy(pack, tie, z_loss):
    config = lm_config(tie=tie, pack=pack, pack_mask=pack)
    config.model.lm.z_loss = z_loss
    task, model, params = _init(config, scale=0.2)
    if pack:
        tokens = packed_tokens(3, 16, seed=1)
    else:   # one document a row: start, words, EOS, padding (targets up to the EOS)
        tokens = np.zeros((3, 16), np.int32)
        for r, n in enumerate((5, 14, 9)):
            tokens[r, :n + 2] = [2, *np.random.default_rng(r).integers(5, 64, n), EOS]
    loss, metrics = task.loss_terms(model, None)["lm"].fn(params, {"text": tokens}, None)
    logits = _logits(model, params, tokens, document_mask(tokens, EOS) if pack else None)[:, :-1]
    logp = numpy_log_softmax(logits)
    targets = tokens[:, 1:]
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    if pack:
        w = np.ones_like(nll)
    else:
        w = np.zeros_like(nll)
        for r in range(3):
            end = int(np.argmax(tokens[r] == EOS))    # targets 1..end
            w[r, :end] = 1
    log_z = np.log(np.exp(logits).sum(-1))
    want = (w * nll).sum() / w.sum() + z_loss * (w * log_z ** 2).sum() / w.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(metrics["lm_count"]) == w.sum()
    np.testing.assert_allclose(float(metrics["lm_accuracy"]),
                               (w * (logits.argmax(-1) == targets)).sum() / w.sum(), rtol=1e-6)


def _to_gpt2(config, params, out):
    hf_config, tensors = export.to_reference("hf_gpt2", config, params)
    hf_gpt2.save(str(out), hf_config, tensors, config)
    import transformers
    return transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()


def _torch_logits(reference, tokens):
    import torch
    with torch.no_grad():
        return reference(torch.from_numpy(np.asarray(tokens, np.int64))).logits.double().numpy()


def _greedy(next_logits, prompt, steps, pad_to=None):
    """Greedy continuation, the whole prefix recomputed each step: the new ids. `pad_to`: the
    prefix padded to that length (one compile; causal, so the padding changes nothing before)."""
    seq = list(prompt)
    for _ in range(steps):
        row = np.array([seq + [0] * ((pad_to or len(seq)) - len(seq))], np.int32)
        seq.append(int(np.argmax(next_logits(row)[0, len(seq) - 1])))
    return seq[len(prompt):]


@pytest.mark.parametrize("tie,scan", [(True, False), (False, True)])
def test_exported_gpt2_gives_the_same_logits_and_greedy_continuation(tmp_path, tie, scan):
    config = lm_config(context=40, tie=tie, scan=scan)
    _, model, params = _init(config, seed=1, scale=0.3)
    reference = _to_gpt2(config, params, tmp_path / "gpt2")
    written = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    assert written["tie_word_embeddings"] is tie and reference.config.tie_word_embeddings is tie
    assert (tmp_path / "gpt2" / "tokenizer.json").is_file()   # a clip_bpe run's tokenizer
    tokens = packed_tokens(2, 40, seed=3)
    ours, theirs = _logits(model, params, tokens), _torch_logits(reference, tokens)
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-4
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    prompt = [2, 17, 30, 41, 5, 9, 22, 60]
    apply = jax.jit(lambda t: model.apply({"params": params}, t, method="lm_logits"))
    mine = _greedy(lambda t: np.asarray(apply(t)), prompt, 32, pad_to=40)
    assert mine == _greedy(lambda t: _torch_logits(reference, t), prompt, 32)
    assert len(set(mine)) > 1      # not one token repeated: the logits decide something


def test_gpt2_import_gives_transformers_logits():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf_config = GPT2Config(vocab_size=96, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                           activation_function="gelu_new", initializer_range=0.3)
    reference = GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():   # layer norms away from the identity
        for name, p in reference.named_parameters():
            if "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
    tensors = {k: v.numpy() for k, v in reference.state_dict().items()}
    config, params, fresh = export.from_reference("hf_gpt2", hf_config.to_dict(), tensors,
                                                  config_lib.load("configs/smoke_lm.py"))
    assert fresh == [] and config.model.text.width == 32 and config.model.lm.tie_embeddings
    model = tasks.get(config, TOKENIZER).build_model()
    tokens = np.random.default_rng(0).integers(0, 96, (2, 24)).astype(np.int32)
    ours, theirs = _logits(model, params, tokens), _torch_logits(reference, tokens)
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-4


def test_exported_tokenizers_load_in_autotokenizer_and_tokenise_as_mmjax(tmp_path):
    from transformers import AutoTokenizer
    from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer
    texts = ["To be, or not to be: that is the question.", "Whether 'tis nobler in the mind",
             "def f(x): return x ** 2  # Python"]
    for name, tok in (("clip", ClipTokenizer()), ("wordpiece", WordPieceTokenizer.train(texts * 5, 120))):
        out = tmp_path / name
        out.mkdir()
        hf_gpt2.save_tokenizer(str(out), tok, 16)
        theirs = AutoTokenizer.from_pretrained(str(out))
        assert theirs(texts, add_special_tokens=False)["input_ids"] == tok.ids(texts), name
        assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (
            tok.bos_id, tok.eos_id, tok.pad_id), name


def test_gpt2_export_refuses_in_one_line_what_gpt2_cannot_hold():
    config = lm_config()
    config.model.text.update(pre_norm=False)
    with pytest.raises(ValueError, match=r"no transformers GPT-2 counterpart: model.text.pre_norm"):
        hf_gpt2.reference_config(config)


@pytest.mark.parametrize("chunk", [0, 4])
def test_lm_loss_on_a_3d_mesh_equals_one_device(chunk):
    """8 simulated devices, data 2 x fsdp 2 x tensor 2: loss and grads within 1e-5."""
    tokens = packed_tokens(16, 16, seed=5)

    def loss_and_grads(shape):
        config = lm_config(tie=False)
        config.model.lm.update(z_loss=1e-3, chunk=chunk)
        config.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
        run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:int(np.prod(shape))])
        state = run.init_state()
        leaf = state.params["lm_head"]
        assert len(leaf.sharding.device_set) == int(np.prod(shape))
        fn = jax.value_and_grad(make_loss_fn(run.task.loss_terms(run.model, run.mesh)), has_aux=True)
        batch = sharding.global_batch({"text": tokens}, run.mesh)
        (loss, _), grads = Traced(jax.jit(fn, in_shardings=(run.state_shardings.params,
                                                            sharding.batch_sharding(run.mesh), None)),
                                  run.mesh, run.rules)(state.params, batch, jax.random.PRNGKey(0))
        return float(loss), jax.device_get(grads)

    loss_1, grads_1 = loss_and_grads((1, 1, 1))
    loss_8, grads_8 = loss_and_grads((2, 2, 2))
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_8), jax.tree.leaves(grads_1)):
        assert np.linalg.norm(a - b) <= 1e-5 * max(np.linalg.norm(b), 1e-30)


@pytest.fixture(scope="module")
def prose_dir(tmp_path_factory):
    """The prose dataset and its WordPiece vocabulary, built once for this file's tests."""
    from conftest import made_once
    from mmjax.data import builders
    return str(made_once(tmp_path_factory, "lm_prose", lambda folder: builders.prepare("prose", str(folder))))


def test_lm_evaluator_perplexity_is_exp_mean_nll_of_the_model_logits(prose_dir):
    from mmjax.data import sources
    from mmjax.eval.lm import NextTokenLM
    config = config_lib.load("configs/smoke_lm.py")
    config.model.text.update(context_length=16, width=16, depth=1, num_heads=2, mlp_dim=32)
    run = setup(config, data_dir=prose_dir, devices=jax.devices()[:2])
    params = run.init_state().params
    spec = dict(type="lm", dataset="prose", split="test", every=1, batch_size=256, seed=0)
    got = NextTokenLM(run, spec, prose_dir).run(params)
    # numpy: each held-out text as one row; targets up to and including its first end token
    tok, prose = run.tokenizer, sources.get("prose", prose_dir)
    rows = tok.encode(list(prose.texts(prose_dir, "test")), 16)
    apply = jax.jit(lambda p, t: run.model.apply({"params": p}, t, method="lm_logits"))
    logits = np.concatenate([np.asarray(apply(params, rows[i:i + 256]), np.float64)
                             for i in range(0, len(rows), 256)])[:, :-1]
    nll = -np.take_along_axis(numpy_log_softmax(logits), rows[:, 1:, None], -1)[..., 0]
    ends = np.argmax(rows == tok.eos_id, axis=1)
    w = np.arange(15)[None] < ends[:, None]
    assert got["n"] == len(rows) and got["tokens"] == w.sum()
    np.testing.assert_allclose(got["perplexity"], np.exp(nll[w].mean()), rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], (logits.argmax(-1) == rows[:, 1:])[w].mean())
    # the unigram model: add-one counts of the train split's targets
    train = tok.encode(list(prose.texts(prose_dir, "train")), 16)
    tw = np.arange(15)[None] < np.argmax(train == tok.eos_id, axis=1)[:, None]
    counts = np.bincount(train[:, 1:][tw], minlength=tok.vocab_size) + 1.0
    np.testing.assert_allclose(got["unigram_perplexity"],
                               np.exp(-np.log(counts / counts.sum())[rows[:, 1:][w]].mean()),
                               rtol=1e-6)


@pytest.mark.acceptance   # ~3-9 min: run by hand (pytest -m acceptance), outside CI's budget
def test_smoke_lm_halves_the_unigram_perplexity(tmp_path, prose_dir):
    """configs/smoke_lm.py end to end; then its export loads in transformers."""
    from conftest import run_mmjax
    workdir = str(tmp_path / "run")
    run_mmjax("train", "--workdir", workdir, "--data_dir", prose_dir, "--config", "configs/smoke_lm.py")
    records = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    final = [r for r in records if "eval/lm/perplexity" in r][-1]
    print(final)
    assert final["eval/lm/perplexity"] <= 0.5 * final["eval/lm/unigram_perplexity"], final
    run_mmjax("export", "--workdir", workdir, "--format", "hf_gpt2", "--out", str(tmp_path / "gpt2"))
    import transformers
    transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "gpt2"))


@pytest.mark.parametrize("tie", [True, False])
def test_head_in_chunks_gives_the_loss_and_grads_of_the_whole(tie):
    """model.lm.chunk=4 over 15 target rows (padded to 16): loss and grads as chunk=0."""
    tokens = packed_tokens(4, 16, seed=7)
    out = []
    for chunk in (0, 4):
        config = lm_config(tie=tie)
        config.model.lm.update(z_loss=1e-2, chunk=chunk)
        task, model, params = _init(config, scale=0.2)
        fn = task.loss_terms(model, None)["lm"].fn
        (loss, metrics), grads = jax.value_and_grad(fn, has_aux=True)(params, {"text": tokens}, None)
        out.append((float(loss), jax.device_get(metrics), jax.device_get(grads)))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-6)
    for k in out[0][1]:
        np.testing.assert_allclose(out[1][1][k], out[0][1][k], rtol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(out[1][2]), jax.tree.leaves(out[0][2])):
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)
