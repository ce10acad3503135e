"""Splash attention (nn/splash.py) in Pallas' interpret mode against the einsum attention, whose
masks are numpy pair masks here: causal, padded and packed, forward and gradients, one
device and sharded over data x fsdp x tensor; the LM loss with it; its one-line errors; and
(`tpu_compile`, libtpu) 'auto' compiling the Mosaic kernel for a TPU topology."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import sharding, tasks
from mmjax.nn import splash
from mmjax.nn.attention import dot_product_attention
from mmjax.train.setup import setup
from mmjax.train.step import Traced, make_loss_fn

B, L, H, D = 2, 128, 2, 8   # the kernel's blocks are 128 rows: the smallest sequence it takes


def qkv(b=B, length=L, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(b, length, H, D)), jnp.float32) for _ in range(3))


def documents(b=B, length=L, seed=0):
    """int32 [b, l]: ids of documents of 1-40 tokens laid end to end."""
    rng = np.random.default_rng(seed)
    return np.stack([np.repeat(np.arange(length), rng.integers(1, 41, length))[:length]
                     for _ in range(b)]).astype(np.int32)


def padding(b=B, length=L):
    """bool [b, l]: row r holds length - 37 r real tokens, then padding."""
    return np.arange(length)[None, :] < (length - 37 * np.arange(b))[:, None]


def pair_mask(kind, mask):
    """numpy: [b, l, l] the (query, key) pairs the mask allows, besides causality."""
    if kind == "padded":
        return np.broadcast_to(mask[:, None, :], mask.shape + mask.shape[-1:])
    return mask[:, :, None] == mask[:, None, :]


CASES = {   # name: (causal, mask [b, l] or None)
    "causal": (True, None),
    "padded": (False, padding()),
    "packed": (True, documents()),
}


def both(q, k, v, causal, mask):
    """(splash, einsum with the numpy pair mask) outputs and their grads of <out, cotangent>."""
    cot = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32)
    kind = None if mask is None else "padded" if mask.dtype == bool else "packed"
    pairs = None if mask is None else jnp.asarray(pair_mask(kind, mask))

    def run(backend, m):
        f = lambda q, k, v: dot_product_attention(q, k, v, padding_mask=m, causal=causal,  # noqa: E731
                                                  backend=backend)
        out, vjp = jax.vjp(jax.jit(f), q, k, v)
        return out, vjp(cot)

    return run("splash", None if mask is None else jnp.asarray(mask)), run("einsum", pairs)


def close(got, want, rtol):
    assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(want), np.abs(got - want).max()


@pytest.mark.parametrize("case", list(CASES))
def test_splash_equals_einsum_attention_forward_and_gradients(case):
    """Every query row, forward within 1e-5, dq / dk / dv within 1e-4 relative."""
    causal, mask = CASES[case]
    (out, grads), (ref, ref_grads) = both(*qkv(), causal, mask)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        close(g, r, 1e-4)


def test_splash_across_blocks_is_the_same_online_softmax(monkeypatch):
    """256 rows in 2 x 2 blocks of 128 (the kernel skips the block above the diagonal):
    packed documents, forward and gradients."""
    monkeypatch.setattr(splash, "BLOCKS", (128,))
    (out, grads), (ref, ref_grads) = both(*qkv(1, 256, seed=1), True, documents(1, 256, seed=2))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        close(g, r, 1e-4)


def test_splash_sharded_over_data_fsdp_and_tensor_equals_one_device():
    """Batch over data x fsdp, heads over tensor, inside shard_map: the einsum's output."""
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    q, k, v = qkv(b=4)
    ids = jnp.asarray(documents(4))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules()):
        out = jax.jit(lambda q, k, v, m: splash.splash_attention(q, k, v, m, True))(q, k, v, ids)
    ref = dot_product_attention(q, k, v, padding_mask=jnp.asarray(pair_mask("packed", ids)),
                                causal=True, backend="einsum")
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_lm_loss_with_splash_on_a_3d_mesh_equals_einsum_on_one_device():
    """task 'lm', packed rows with data.pack_mask (document ids reach the kernel): loss and
    grads of 8 devices (data 2 x fsdp 2 x tensor 2) under splash = one device under einsum."""
    from test_lm import TOKENIZER, lm_config, packed_tokens
    tokens = packed_tokens(8, L, seed=3)
    config = lm_config(context=L, depth=1)
    config.model.attention = "splash"
    config.mesh.update(data=2, fsdp=2, tensor=2)
    config.train.batch_size = 8
    run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:8])
    params = run.init_state().params
    fn = jax.value_and_grad(make_loss_fn(run.task.loss_terms(run.model, run.mesh)), has_aux=True)
    batch = sharding.global_batch({"text": tokens}, run.mesh)
    (loss, _), grads = Traced(jax.jit(fn), run.mesh, run.rules)(params, batch, jax.random.PRNGKey(0))

    config.model.attention = "einsum"
    task = tasks.get(config, TOKENIZER)
    ref = jax.value_and_grad(make_loss_fn(task.loss_terms(task.build_model(), None)), has_aux=True)
    (ref_loss, _), ref_grads = jax.jit(ref)(jax.device_get(params), {"text": tokens},
                                            jax.random.PRNGKey(0))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(jax.tree.leaves(jax.device_get(grads)), jax.tree.leaves(ref_grads)):
        close(g, r, 1e-4)


def test_auto_picks_splash_only_on_tpu_from_the_threshold():
    assert splash.choose("auto", 4096, 2048) == "auto"            # this is a CPU
    with jax.set_mesh(sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])):
        assert splash.platform() == "cpu"
    assert splash.choose("xla", 4096, 2048) == "xla"


def test_splash_errors_name_the_fix():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="pass document ids"):
        splash.splash_attention(q, k, v, jnp.ones((B, L, L), bool), True)
    q, k, v = qkv(length=96)
    with pytest.raises(ValueError, match="multiple of 128"):
        splash.splash_attention(q, k, v, None, True)


# Compiled for a v5p-8 (4 chips, batch over data, heads over tensor) in a process of its own
# (libtpu, compile-only devices): 'auto' from the threshold must be the kernel, forward and
# backward, and XLA must plan no [l, l] scores.
TPU_SCRIPT = """
import json, flax.linen as nn, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from mmjax import aot, sharding
from mmjax.nn.attention import dot_product_attention
devices = aot.topology_devices(aot.parse_topology("v5p-8"))
mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=2), devices)
b, l, h, d = 4, 4096, 4, 64
x = jax.ShapeDtypeStruct((b, l, h, d), jnp.bfloat16,
                         sharding=NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
ids = jax.ShapeDtypeStruct((b, l), jnp.int32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
def loss(q, k, v, ids):
    out = dot_product_attention(q, k, v, padding_mask=ids, causal=True, backend="auto",
                                splash_min_length=l)
    return out.astype(jnp.float32).sum()
with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules()):
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, ids)
compiled = lowered.compile()
print(json.dumps(dict(kernels=lowered.as_text().count("tpu_custom_call"),
                      temp_bytes=compiled.memory_analysis().temp_size_in_bytes)))
"""


@pytest.mark.tpu_compile
def test_auto_compiles_the_splash_kernel_for_a_tpu_topology():
    proc = subprocess.run([sys.executable, "-c", TPU_SCRIPT], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kernels"] >= 3                        # forward, dq, dkv Mosaic kernels
    scores = 2 * 2 * 4096 * 4096 * 4                     # one device's [b, h, l, l] float32
    assert result["temp_bytes"] < scores / 4, result      # 37 MiB planned (libtpu 0.0.42.1)


def test_auto_takes_cudnn_on_gpu_only_where_its_training_kernels_fit():
    from mmjax.nn.attention import gpu_flash
    q = jnp.zeros((2, 1024, 12, 64), jnp.bfloat16)
    assert gpu_flash(q, q, None, None) == "cudnn"
    assert gpu_flash(q.astype(jnp.float32), q, None, None) is None           # 32-bit inputs
    vit = jnp.zeros((2, 197, 12, 64), jnp.bfloat16)
    assert gpu_flash(vit, vit, None, None) is None                           # 197 % 64 != 0
    assert gpu_flash(q, q, jnp.ones((2, 1024), bool), None) is None           # a padding mask
    assert gpu_flash(q[:, :64], q, None, jnp.zeros((2, 64), jnp.int32)) is None  # selected rows
    assert gpu_flash(jnp.zeros((2, 1024, 2, 256), jnp.bfloat16), q, None, None) is None  # head 256
