"""The pruned last layer (`model.prune_last_layer`): the same loss and gradients, fewer FLOPs.

The last layer computes keys and values at every position, but the rest only at the rows the
loss reads (class token, EOT token, [CLS], masked slots). Each case compares a train loss and
its gradients between the pruned and the unpruned model on the same (perturbed) params.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import sharding, tasks
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.options import EncoderOptions, TextOptions
from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import Encoder
from mmjax.train.step import make_loss_fn
from tiny_configs import TOKENIZER, tiny_batch, tiny_config

POST_LN = dict(pre_norm=False)
BERT_TEXT = dict(causal=False, pool="first", pre_norm=False, embed_norm=True, final_norm=False,
                 type_vocab_size=2)

# (task, model keys, image keys, text keys, classify keys)
CASES = {
    "clip_cls_eot_pre_ln": ("clip", {}, {}, {}, {}),
    "clip_post_ln": ("clip", {}, POST_LN, POST_LN, {}),
    "clip_unfused_remat": ("clip", dict(fused_qkv=False, remat="full"), {}, {}, {}),
    "mlm_post_ln": ("mlm", {}, {}, {}, {}),
    "mlm_pre_ln": ("mlm", {}, {}, dict(pre_norm=True), {}),
    "clip_mlm": ("clip+mlm", {}, {}, {}, {}),
    "bert_first_post_ln": ("classify", {}, {}, BERT_TEXT, dict(tower="text", num_classes=3)),
    "vit_cls_post_ln": ("classify", {}, POST_LN, {}, dict(tower="image", num_classes=3)),
}


def _config(case, scan, prune):
    task, model, image, text, classify = CASES[case]
    config = tiny_config(task, prune_last_layer=prune, **model)
    config.model.scan = scan
    config.model.image.update(depth=3, **image)    # scan: a head of 2 scanned layers + the last
    config.model.text.update(depth=3, **text)
    config.model.classify.update(classify)
    return config


def _batch(config, task):
    batch = tiny_batch(config, batch_size=4)
    batch["text"][:, 5:] = 0             # padding after the EOT-like token: masks matter
    batch["text"][:, 4] = TOKENIZER.vocab_size - 1
    if task == "classify":
        tower = config.model.classify.tower
        spec = tasks.get(config, TOKENIZER).batch_spec()[tower]
        batch = {tower: batch.get(tower, batch["text"][:, :spec.shape[0]]),
                 "label": np.arange(4, dtype=np.int32) % 3}
    return batch


def _perturbed_params(task, config):
    """Initial params plus noise, so no gradient is zero by construction (a zero head)."""
    method, args = task.init_args(2)
    model = task.build_model()

    @jax.jit   # one program: eager init + noise dispatch (and compile) op by op, ~5x slower
    def make(args):
        params = nn.unbox(model.init(jax.random.PRNGKey(0), *args, method=method)["params"])
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        return jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
                                         for p, k in zip(leaves, keys)])

    return make(args)


def _loss_and_grads(config, params, batch, mesh):
    task = tasks.get(config, TOKENIZER)
    loss_fn = make_loss_fn(task.loss_terms(task.build_model(), mesh))
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, _), grads = grad_fn(params, batch, jax.random.PRNGKey(2))
    return float(loss), grads


def assert_grads_close(got, want, rtol=1e-5):
    """Per leaf, relative to its own norm; a k bias (softmax ignores a shift shared by every
    key, so its gradient is 0 and only rounding noise) relative to the whole gradient's."""
    total = np.sqrt(sum(np.sum(np.float64(b) ** 2) for b in jax.tree.leaves(want)))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        name = jax.tree_util.keystr(path)
        scale = total if name.endswith("['k_bias']") else np.linalg.norm(np.float64(b))
        err = np.linalg.norm(np.float64(a) - np.float64(b))
        assert err <= rtol * scale, (name, err, scale)


# Scan and unrolled for a pre-LN and a post-LN case (every pooling: ViT cls, text EOT, masked
# slots); the other cases scanned, the default (each case's compile costs the suite ~10 s).
BOTH_LAYOUTS = ("clip_cls_eot_pre_ln", "mlm_post_ln")


@pytest.mark.parametrize("case,scan", [(c, s) for c in CASES for s in (False, True)
                                       if s or c in BOTH_LAYOUTS])
def test_pruned_loss_and_grads_match_unpruned(case, scan):
    task_name = CASES[case][0]
    pruned, full = (_config(case, scan, prune) for prune in (True, False))
    task = tasks.get(pruned, TOKENIZER)
    mesh = sharding.make_mesh(pruned.mesh, devices=jax.devices()[:1])
    params = _perturbed_params(task, pruned)
    batch = _batch(pruned, task_name)
    loss, grads = _loss_and_grads(pruned, params, batch, mesh)
    want_loss, want_grads = _loss_and_grads(full, params, batch, mesh)
    assert np.isfinite(loss) and abs(loss - want_loss) <= 1e-6 * abs(want_loss), (loss, want_loss)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert_grads_close(grads, want_grads)


@pytest.mark.parametrize("backend", ["einsum", "xla"])
@pytest.mark.parametrize("causal", [False, True])
def test_selected_queries_are_rows_of_full_attention(backend, causal):
    """Queries at positions [b, n] against every key: the full attention's rows there."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 7, 3, 4)).astype(np.float32) for _ in range(3))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3], bool)
    positions = np.array([[0, 6, 2], [3, 1, 1]], np.int32)
    full = dot_product_attention(q, k, v, padding_mask=mask, causal=causal, backend=backend)
    rows = dot_product_attention(np.take_along_axis(q, positions[..., None, None], 1), k, v,
                                 padding_mask=mask, causal=causal, q_positions=positions,
                                 backend=backend)
    np.testing.assert_allclose(rows, np.take_along_axis(np.asarray(full), positions[..., None, None], 1),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_selected_rows_of_a_one_layer_encoder(scan):
    """depth 1 (no scanned head): the selected rows are the full output's rows there."""
    x = np.random.default_rng(0).normal(size=(2, 6, 16)).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2], bool)
    select = np.array([[0, 3], [5, 1]], np.int32)
    kw = dict(depth=1, num_heads=2, mlp_dim=32, causal=True, scan=scan)
    pruned, full = Encoder(EncoderOptions(**kw)), Encoder(EncoderOptions(**kw, prune_last_layer=False))
    params = nn.unbox(pruned.init(jax.random.PRNGKey(0), x, mask, select)["params"])
    want = full.apply({"params": params}, x, mask)
    got = pruned.apply({"params": params}, x, mask, select)
    np.testing.assert_allclose(got, np.take_along_axis(np.asarray(want), select[..., None], 1),
                               rtol=1e-5, atol=1e-6)


def test_full_sequence_methods_are_not_pruned():
    """`__call__` (fill-mask, sentence embeddings) still returns every position."""
    tower = TextTransformer(TextOptions(vocab_size=50, context_length=8, width=16, depth=2,
                                        num_heads=2, mlp_dim=32, scan=True))
    tokens = np.array([[48, 5, 6, 49, 0, 0, 0, 0]], np.int32)
    params = nn.unbox(tower.init(jax.random.PRNGKey(0), tokens)["params"])
    pooled, seq = tower.apply({"params": params}, tokens)
    assert seq.shape == (1, 8, 16)
    np.testing.assert_allclose(tower.apply({"params": params}, tokens, method="pooled"), pooled,
                               rtol=1e-5, atol=1e-6)


def _compiled_flops(config):
    task = tasks.get(config, TOKENIZER)
    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
    loss_fn = make_loss_fn(task.loss_terms(task.build_model(), mesh))
    method, args = task.init_args(2)
    params = jax.eval_shape(lambda: nn.unbox(task.build_model().init(
        jax.random.PRNGKey(0), *args, method=method)["params"]))
    batch = {k: jax.ShapeDtypeStruct((config.train.batch_size, *s.shape), s.dtype)
             for k, s in task.batch_spec().items()}
    lowered = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(
        params, batch, jax.random.PRNGKey(0))
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"], task.train_flops()


@pytest.mark.parametrize("task", ["clip", "mlm"])
def test_pruned_train_step_compiles_to_fewer_flops(task):
    """XLA's count of the compiled step drops by about what mmjax/flops.py says it does."""
    results = {}
    for prune in (True, False):
        config = tiny_config(task, prune_last_layer=prune)   # unrolled: XLA counts each layer
        config.model.image.update(width=32, mlp_dim=128)
        config.model.text.update(width=32, mlp_dim=128, context_length=16)
        config.model.mlm.max_predictions = 4
        results[prune] = _compiled_flops(config)
    (compiled, analytic), (compiled_full, analytic_full) = results[True], results[False]
    assert compiled < compiled_full and analytic < analytic_full
    saved, saved_analytic = compiled_full - compiled, analytic_full - analytic
    assert 0.7 * saved_analytic < saved < 1.5 * saved_analytic, (saved, saved_analytic)


@pytest.mark.parametrize("image_pool,text_pool,prunable", [("cls", "eot", True), ("mean", "mean", False)])
def test_flops_formula_prunes_only_what_pools_one_row(image_pool, text_pool, prunable):
    flops = {}
    for prune in (True, False):
        config = tiny_config("clip", prune_last_layer=prune)
        config.model.image.pool, config.model.text.pool = image_pool, text_pool
        flops[prune] = tasks.get(config, TOKENIZER).train_flops()
    assert (flops[True] < flops[False]) == prunable and flops[True] <= flops[False]
