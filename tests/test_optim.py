"""Optimiser from config: schedule values, weight-decay mask, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.config import defaults
from mmjax.optim import decay_mask, make_optimizer, schedule


def test_warmup_then_cosine_and_linear():
    c = defaults().optim
    c.update(lr=1.0, warmup_steps=10, end_lr_ratio=0.1, decay="cosine")
    lr = schedule(c, 110)
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(lr(60), 0.1 + 0.9 * 0.5, atol=1e-6)   # half-way down the cosine
    np.testing.assert_allclose(lr(110), 0.1, atol=1e-6)
    c.decay = "linear"
    np.testing.assert_allclose(schedule(c, 110)(60), 0.55, atol=1e-6)


def test_weight_decay_only_on_matrices():
    params = {"encoder": {"layers": {"ln1": {"scale": jnp.ones((3, 4)), "bias": jnp.ones((3, 4))},
                                     "attn": {"qkv_kernel": jnp.ones((3, 4, 3, 2, 2)), "qkv_bias": jnp.ones((3, 3, 2, 2))}}},
              "token_embed": {"embedding": jnp.ones((10, 4))}, "pos_embedding": jnp.ones((5, 4)),
              "cls_token": jnp.ones((4,)), "logit_scale": jnp.ones(()), "logit_bias": jnp.ones(()),
              "mlp": {"fc1": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones((8,))}}}
    mask = decay_mask(params)
    assert mask["encoder"]["layers"]["attn"]["qkv_kernel"] and mask["token_embed"]["embedding"]
    assert mask["mlp"]["fc1"]["kernel"]
    assert not any([mask["encoder"]["layers"]["ln1"]["scale"], mask["encoder"]["layers"]["ln1"]["bias"],
                    mask["encoder"]["layers"]["attn"]["qkv_bias"], mask["pos_embedding"], mask["cls_token"],
                    mask["logit_scale"], mask["logit_bias"], mask["mlp"]["fc1"]["bias"]])


def test_adamw_decays_kernels_not_biases():
    c = defaults().optim
    c.update(lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=1.0, decay="constant")
    tx, _ = make_optimizer(c, 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


def _np_adam(grads, lr, b1, b2, eps):
    """Plain-numpy Adam (no decay), float64: the update of each step, in order."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        out.append(-lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
    return out


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("clip_norm", [1.0, 0.0])
def test_clip_norm_clips_the_global_gradient_norm_of_the_update(name, clip_norm):
    """mmjax's optimizer from a config: the updates of two steps (gradient norms 50 and 0.3)
    equal numpy's updates of the gradients scaled to global norm <= clip_norm (0: unclipped).
    Adam would hide a constant scale, so the two steps' norms differ."""
    c = defaults().optim
    c.update(name=name, lr=0.1, warmup_steps=0, decay="constant", weight_decay=0.0, clip_norm=clip_norm)
    tx, _ = make_optimizer(c, 10)
    rng = np.random.default_rng(0)
    params = {"kernel": np.zeros((3, 2), np.float32), "bias": np.zeros((2,), np.float32)}
    grads = []
    for norm in (50.0, 0.3):
        g = {k: rng.normal(size=v.shape) for k, v in params.items()}
        scale = norm / np.sqrt(sum(np.sum(x * x) for x in g.values()))
        grads.append({k: np.float32(x * scale) for k, x in g.items()})
    state, got = tx.init(params), []
    for g in grads:
        updates, state = tx.update(g, state, params)
        got.append(updates)
    # the reference: each step's gradients as one flat vector, scaled down to the clip norm
    flat = [np.concatenate([np.float64(g[k]).ravel() for k in ("kernel", "bias")]) for g in grads]
    if clip_norm:
        flat = [x * min(1.0, clip_norm / np.linalg.norm(x)) for x in flat]
    want = ([-c.lr * x for x in flat] if name == "sgd" else _np_adam(flat, c.lr, c.b1, c.b2, c.eps))
    got = [np.concatenate([np.asarray(u["kernel"]).ravel(), np.asarray(u["bias"]).ravel()]) for u in got]
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-9)   # [step, param]
    if name == "sgd":   # the scale is visible: step 0 moves by lr * clip_norm when clipped
        assert np.linalg.norm(want[0]) == pytest.approx(0.1 * (clip_norm or 50.0))


def _mlm_params(scan, depth=3):
    """Zero params of a tiny BERT (text tower of `depth` blocks + MLM head), scanned or not."""
    from mmjax import tasks
    from tiny_configs import TOKENIZER, tiny_config
    import flax.linen as nn
    config = tiny_config("mlm")
    config.model.scan = scan
    config.model.text.depth = depth
    task = tasks.get(config, TOKENIZER)
    method, args = task.init_args()
    shapes = jax.eval_shape(lambda: nn.unbox(task.build_model().init(jax.random.PRNGKey(0), *args,
                                                                      method=method))["params"])
    return config, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _sgd(config, **optim):
    c = config.optim
    c.update(name="sgd", lr=1.0, warmup_steps=0, decay="constant", clip_norm=0.0, **optim)
    return make_optimizer(c, 10, config.model)[0]


@pytest.mark.parametrize("scan", [False, True])
def test_layer_wise_decay_by_hand_for_three_layers(scan):
    """SGD at rate 1 on gradients of ones: each update is -decay**(depth - layer)."""
    config, params = _mlm_params(scan)
    tx = _sgd(config, layer_decay=0.5, head=("head/*",), head_lr_mult=3.0)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(ones, tx.init(params), params)
    text = updates["text"]
    np.testing.assert_array_equal(text["token_embed"]["embedding"], -0.125)   # layer 0: 0.5**3
    np.testing.assert_array_equal(text["ln_embed"]["scale"], -0.125)
    fc1 = ([text["encoder"]["layers"]["mlp"]["fc1"]["kernel"][i] for i in range(3)] if scan else
           [text["encoder"][f"layers_{i}"]["mlp"]["fc1"]["kernel"] for i in range(3)])
    for block, want in zip(fc1, (-0.25, -0.5, -1.0)):                         # blocks 0, 1, 2
        np.testing.assert_array_equal(block, want)
    np.testing.assert_array_equal(updates["head"]["transform"]["kernel"], -3.0)  # the head rate


def test_top_layers_then_gradual_unfreezing():
    config, params = _mlm_params(scan=True)
    tx = _sgd(config, trainable_top_layers=1, unfreeze_every=2)
    ones = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    trained = []
    for _ in range(8):
        updates, state = tx.update(ones, state, params)
        per_block = updates["text"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"]
        trained.append([bool(np.any(per_block[i])) for i in range(3)]
                       + [bool(np.any(updates["text"]["token_embed"]["embedding"]))])
    # steps 0-1: the top block; 2-3: two; 4-5: all three; 6-: the embeddings too
    assert trained[0] == trained[1] == [False, False, True, False]
    assert trained[2] == [False, True, True, False] and trained[4] == [True, True, True, False]
    assert trained[6] == [True, True, True, True]
    assert np.all(updates["head"]["transform"]["kernel"] == -1.0)   # heads always train


def test_a_frozen_tower_is_bitwise_unchanged_and_has_no_optimizer_state(tmp_path):
    from mmjax import sharding
    from mmjax.checkpoint import Checkpointer
    from mmjax.train.setup import setup
    from tiny_configs import TOKENIZER, tiny_batch, tiny_config
    config = tiny_config("clip")
    config.optim.update(frozen=("image/*",), weight_decay=0.1)
    run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:1])
    state = run.init_state()
    before = jax.device_get(state.params)
    step = run.train_step()
    for i in range(3):
        state, _ = step(state, sharding.global_batch(tiny_batch(config, seed=i), run.mesh))
    after = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(after["image"]), jax.tree.leaves(before["image"])):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(after["text"]), jax.tree.leaves(before["text"])))
    n_image = sum(x.size for x in jax.tree.leaves(before["image"]))
    n_all = sum(x.size for x in jax.tree.leaves(before))
    n_state = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert n_state < 2 * (n_all - n_image) + 100   # AdamW moments for the trainable part only
    ckpt = Checkpointer(str(tmp_path / "ckpt"), config)   # ... and it checkpoints exactly
    ckpt.save(3, state, b'{"position": 3}')
    ckpt.wait()
    restored = ckpt.restore(run.abstract_state)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(jax.device_get(restored.state)), jax.tree.leaves(jax.device_get(state))):
        np.testing.assert_array_equal(a, b)
