"""Optimiser from config: schedule values, weight-decay mask, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def test_adamw_decays_kernels_not_biases_and_clips():
    c = defaults().optim
    c.update(lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=1.0, decay="constant")
    tx, _ = make_optimizer(c, 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)
    big = {"kernel": 100 * jnp.ones((2, 2)), "bias": 100 * jnp.ones((2,))}
    clipped, _ = optax.clip_by_global_norm(1.0).update(big, None)
    assert abs(float(optax.tree.norm(clipped)) - 1.0) < 1e-5
