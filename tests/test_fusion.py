"""Fusion encoder and image-text matching: hard negatives and cross-attention against numpy,
the fused model's two passes, the clip+itm+mlm loss on a 3-D mesh against one device."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import sharding, tasks
from mmjax.negatives import draw, false_negatives, hard_negatives
from mmjax.nn.cross_attention import CrossAttention
from mmjax.train.setup import setup
from mmjax.train.step import Traced, make_loss_fn
from tiny_configs import TOKENIZER, tiny_batch, tiny_config


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_false_negatives_are_equal_captions_or_equal_labels():
    texts = np.array([[2, 5, 6], [2, 7, 6], [2, 5, 6], [2, 8, 8]], np.int32)
    labels = np.array([0, 1, 2, 1])
    want = np.array([[(texts[i] == texts[j]).all() for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(false_negatives(jnp.asarray(texts)), want)
    np.testing.assert_array_equal(false_negatives(jnp.asarray(texts), jnp.asarray(labels)),
                                  want | (labels[:, None] == labels[None, :]))


def test_hard_negatives_follow_the_masked_softmax_and_never_draw_a_false_negative():
    rng = np.random.default_rng(0)
    b, n = 6, 20000
    logits = rng.normal(size=(b, b)).astype(np.float32) * 1.5
    excluded = np.eye(b, dtype=bool)
    excluded[0, 3] = excluded[3, 0] = True       # same caption
    excluded[1, 4] = excluded[4, 1] = True       # same label
    excluded[5, :] = True                        # a text with no possible negative image
    keys = jax.random.split(jax.random.key(1), n)
    text, image, ok_text, ok_image = jax.jit(jax.vmap(hard_negatives, (0, None, None)))(
        keys, jnp.asarray(logits), jnp.asarray(excluded))
    text, image = np.asarray(text), np.asarray(image)
    assert np.asarray(ok_text)[:, :5].all() and not np.asarray(ok_text)[:, 5].any()
    assert np.asarray(ok_image).all()            # column 5 has allowed rows
    for picks, scores, mask, valid in ((text, logits, excluded, np.arange(5)),
                                       (image, logits.T, excluded.T, np.arange(6))):
        for i in valid:
            p = np_softmax(np.where(mask[i], -np.inf, scores[i].astype(np.float64)))
            counts = np.bincount(picks[:, i], minlength=b)
            assert (counts[mask[i]] == 0).all()       # never the positive nor a false negative
            sigma = np.sqrt(n * p * (1 - p))
            assert (np.abs(counts - n * p) <= 3 * sigma + 1).all(), (i, counts, n * p)


def test_draw_weighs_out_a_row_without_candidates():
    index, valid = draw(jax.random.key(0), jnp.zeros((2, 3)), jnp.array([[True] * 3, [True, False, True]]))
    np.testing.assert_array_equal(valid, [False, True])
    assert int(index[1]) == 1


def test_itm_loss_weighs_each_of_k_negatives_one_kth():
    """itm_loss against numpy: B positives weigh 1, the 2kB negatives valid / k each."""
    from mmjax.tasks.itm import itm_loss
    rng = np.random.default_rng(0)
    b, k = 3, 2
    logits = rng.normal(size=((1 + 2 * k) * b, 2)).astype(np.float32)
    valid_text, valid_image = rng.random(k * b) > 0.3, np.ones(k * b, bool)
    targets = np.r_[np.ones(b), np.zeros(2 * k * b)].astype(int)
    weights = np.r_[np.ones(b), valid_text / k, valid_image / k]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -log_p[np.arange(len(targets)), targets]
    loss, aux = itm_loss(jnp.asarray(logits), jnp.asarray(valid_text), jnp.asarray(valid_image))
    np.testing.assert_allclose(float(loss), (weights * ce).sum() / weights.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(aux["itm_accuracy"]),
                               (weights * (logits.argmax(-1) == targets)).sum() / weights.sum(), rtol=1e-6)


def test_cross_attention_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    context = rng.normal(size=(2, 5, 6)).astype(np.float32)
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    module = CrossAttention(num_heads=2, backend="einsum")
    params = nn.unbox(module.init(jax.random.key(0), x, context, mask))["params"]
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(size=p.shape).astype(np.float32) * 0.1,
                          params)   # nonzero biases
    got = module.apply({"params": params}, x, context, mask)
    p = params
    q = np.einsum("ble,ehd->blhd", x, p["q_kernel"]) + p["q_bias"]
    k = np.einsum("bne,ehd->bnhd", context, p["k_kernel"]) + p["k_bias"]
    v = np.einsum("bne,ehd->bnhd", context, p["v_kernel"]) + p["v_bias"]
    scores = np.einsum("blhd,bnhd->bhln", q, k) / np.sqrt(4)
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
    y = np.einsum("bhln,bnhd->blhd", np_softmax(scores), v)
    want = np.einsum("blhd,hde->ble", y, p["out_kernel"]) + p["out_bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def fused():
    config = tiny_config("clip+itm+mlm")
    task = tasks.get(config, TOKENIZER)
    model = task.build_model()
    method, args = task.init_args(4)
    params = nn.unbox(model.init(jax.random.key(0), *args, method=method))["params"]
    return config, model, params


def test_fused_model_one_text_tower_and_the_vit_tokens(fused):
    config, model, params = fused
    batch = tiny_batch(config, 4)
    blocks = params["text"]["encoder"]["layers_0"]
    assert "cross_attn" in blocks and "ln_cross" in blocks
    # the contrastive pass never reads the cross-attention: without it, the same embeddings
    plain = jax.tree.map(lambda x: x, params)
    for name, layer in params["text"]["encoder"].items():
        plain["text"]["encoder"][name] = {k: v for k, v in layer.items() if "cross" not in k}
    ztxt = model.apply({"params": params}, batch["text"], method="encode_text")
    np.testing.assert_array_equal(ztxt, model.apply({"params": plain}, batch["text"], method="encode_text"))
    # the ViT's tokens: the class token is the pooled row of the (pruned) contrastive pass
    zimg, tokens = model.apply({"params": params}, batch["image"], method="image_features")
    assert tokens.shape == (4, (8 // 4) ** 2 + 1, 16)
    np.testing.assert_allclose(zimg, model.apply({"params": params}, batch["image"], method="encode_image"),
                               atol=1e-6)
    # the fused pass sees the image: another image changes the match probability
    probs = model.apply({"params": params}, batch["image"], batch["text"], method="match")
    other = model.apply({"params": params}, batch["image"][::-1], batch["text"], method="match")
    assert probs.shape == (4,) and np.all((probs > 0) & (probs < 1))
    assert not np.allclose(probs, other)


@pytest.mark.parametrize("fusion", [
    dict(kind="cross", layout="blip"),
    dict(kind="cross", layout="albef", depth=1),
    dict(kind="concat", depth=2)],
    ids=["blip", "albef", "concat"])
def test_clip_itm_mlm_loss_on_a_3d_mesh_equals_one_device(fusion):
    """8 simulated devices, data 2 x fsdp 2 x tensor 2: the summed loss, each term and the
    gradients within 1e-5 of one device's (the negatives drawn from the global batch), for
    each fusion encoder (BLIP's, ALBEF's, the single stream)."""
    def loss_and_grads(shape):
        config = tiny_config("clip+itm+mlm")
        config.model.scan = True
        config.model.fusion.update(fusion)
        config.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
        run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:int(np.prod(shape))])
        state = run.init_state()
        fn = jax.value_and_grad(make_loss_fn(run.task.loss_terms(run.model, run.mesh)), has_aux=True)
        batch = sharding.global_batch(tiny_batch(config, 16, seed=3), run.mesh)
        (loss, metrics), grads = Traced(jax.jit(fn, in_shardings=(run.state_shardings.params,
                                                                  sharding.batch_sharding(run.mesh), None)),
                                        run.mesh, run.rules)(state.params, batch, jax.random.key(7))
        return float(loss), jax.device_get(metrics), jax.device_get(grads)

    loss_1, metrics_1, grads_1 = loss_and_grads((1, 1, 1))
    loss_8, metrics_8, grads_8 = loss_and_grads((2, 2, 2))
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    for name in ("contrastive_loss", "itm_loss", "mlm_loss"):
        np.testing.assert_allclose(metrics_8[name], metrics_1[name], rtol=1e-5)
    # a key bias's gradient is zero (softmax ignores it): rounding noise there, ~1e-8
    for a, b in zip(jax.tree.leaves(grads_8), jax.tree.leaves(grads_1)):
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-7


def test_roc_auc_is_the_fraction_of_positive_negative_pairs_in_order():
    from mmjax.eval.itm import roc_auc
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    want = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert roc_auc(pos, neg) == pytest.approx(want)


def test_reranking_by_an_oracle_lifts_r1_to_the_recall_at_k():
    """Scores 1 at the relevant pairs: re-ranked R@1 is the embeddings' R@k (k = rerank_k)."""
    from mmjax.eval.retrieval import recall_at_k
    rng = np.random.default_rng(1)
    n, d = 30, 8
    zimg, ztxt = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    image_of_text, captions = np.arange(n), [f"caption {i}" for i in range(n)]

    def oracle(i2t, t2i):   # pairs [q, k, (image, text row)]
        return [(pairs[..., 0] == image_of_text[pairs[..., 1]]).astype(float) for pairs in (i2t, t2i)]

    out = recall_at_k(zimg, ztxt, image_of_text, captions, ks=(1, 5), rerank=oracle, rerank_k=5)
    assert out["rerank_i2t_r1"] == out["i2t_r5"] and out["rerank_t2i_r1"] == out["t2i_r5"]
    assert out["rerank_i2t_r5"] == out["i2t_r5"] and out["i2t_r1"] < out["i2t_r5"]


@pytest.mark.acceptance
def test_smoke_itm_zeroshot_itm_accuracy_and_reranking(tmp_path):
    """configs/smoke_itm.py end to end (minutes on 2 CPU cores): zero-shot >= 0.85, ITM
    accuracy >= 0.9 against hard negatives, re-ranking does not lower image->text R@1."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = str(tmp_path / "run")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", "train", "--workdir", workdir,
                           "--config", os.path.join(root, "configs/smoke_itm.py")], cwd=root,
                          env={**os.environ, "XLA_FLAGS": " ".join(flags)}, capture_output=True,
                          text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        final = [r for r in map(json.loads, f) if "eval/itm/hard_accuracy" in r][-1]
    print(json.dumps({k: v for k, v in final.items() if k.startswith("eval/")}))
    assert final["eval/zeroshot/top1"] >= 0.85, final
    assert final["eval/itm/hard_accuracy"] >= 0.9, final
    assert final["eval/retrieval/rerank_i2t_r1"] >= final["eval/retrieval/i2t_r1"], final
