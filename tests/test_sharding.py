"""Sharded training == single-device training, on 8 simulated CPU devices, for every task."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import sharding
from mmjax.train.setup import setup
from mmjax.train.step import Traced, make_loss_fn
from tiny_configs import TOKENIZER, tiny_batch, tiny_config

MESHES = {"data8": (8, 1, 1), "data2_fsdp4": (2, 4, 1), "data2_fsdp2_tensor2": (2, 2, 2), "fsdp8": (1, 8, 1)}


def _build(config, mesh_shape):
    """(run, fresh state) of `config` on the first devices, as `mmjax train` sets them up."""
    data, fsdp, tensor = mesh_shape
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:data * fsdp * tensor])
    return run, run.init_state()


def _loss_and_grads(config, mesh_shape):
    run, state = _build(config, mesh_shape)
    mesh = run.mesh
    batch = sharding.global_batch(tiny_batch(config, seed=1), mesh)
    fn = jax.value_and_grad(make_loss_fn(run.task.loss_terms(run.model, mesh)), has_aux=True)
    (loss, _), grads = Traced(jax.jit(fn, in_shardings=(run.state_shardings.params,
                                                        sharding.batch_sharding(mesh), None)),
                              mesh, run.rules)(state.params, batch, jax.random.PRNGKey(3))
    return float(loss), jax.device_get(grads), state


def _sgd_params(config, mesh_shape, steps=10):
    config.optim.update(name="sgd", lr=0.1)
    run, state = _build(config, mesh_shape)
    step = run.train_step()
    for i in range(steps):
        state, _ = step(state, sharding.global_batch(tiny_batch(config, seed=i), run.mesh))
    return jax.device_get(state.params)


def _assert_trees_close(a, b, rtol):
    """Each leaf within `rtol` relative to its own scale: |a - b| / |b| (L2 norms). A leaf whose
    true value is 0 (a key bias's gradient: softmax ignores a shift shared by every key; b
    holds rounding noise there) is held to rtol x 1e-6 of the whole tree's scale instead."""
    floor = 1e-6 * np.sqrt(sum(np.sum(np.float64(y) ** 2) for y in jax.tree.leaves(b)))

    def close(path, x, y):
        err = np.linalg.norm(np.float64(x) - y) / max(np.linalg.norm(np.float64(y)), floor, 1e-30)
        assert err < rtol, f"{jax.tree_util.keystr(path)}: relative error {err:.2e}"
    jax.tree_util.tree_map_with_path(close, a, b)


def _check_equal_to_single_device(task, meshes):
    loss_1, grads_1, _ = _loss_and_grads(tiny_config(task), (1, 1, 1))
    params_1 = _sgd_params(tiny_config(task), (1, 1, 1))
    for name in meshes:
        shape = MESHES[name]
        loss, grads, state = _loss_and_grads(tiny_config(task), shape)
        # the params really are laid out over the whole mesh
        leaf = state.params["text"]["token_embed"]["embedding"]
        assert len(leaf.sharding.device_set) == np.prod(shape), name
        np.testing.assert_allclose(loss, loss_1, rtol=1e-5, err_msg=name)
        _assert_trees_close(grads, grads_1, rtol=1e-5)
        _assert_trees_close(_sgd_params(tiny_config(task), shape), params_1, rtol=1e-4)


def test_clip_on_a_3d_mesh_equals_the_single_device_run():
    _check_equal_to_single_device("clip", ["data2_fsdp2_tensor2"])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["clip", "mlm", "clip+mlm", "clip+caption"])
def test_every_task_on_every_mesh_equals_the_single_device_run(task):
    """Loss and grads of step 1 within 1e-5, params after 10 SGD steps within 1e-4."""
    _check_equal_to_single_device(task, list(MESHES))


def test_fsdp8_holds_an_eighth_of_the_state_per_device():
    config = config_lib.load("configs/smoke_clip.py")
    _, state = _build(config, (1, 8, 1))
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    per_device = {d: 0 for d in jax.devices()}
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            per_device[shard.device] += shard.data.nbytes
    ratio = max(per_device.values()) / total
    print(f"fsdp=8: largest per-device share of params + optimizer state = {ratio:.4f}")
    assert ratio < 0.2


def _spy_on_jit(monkeypatch):
    """Replaces `jax.jit` so that each jitted call made with concrete arguments is also
    lowered and compiled on the side; returns the list the compiled programs go to."""
    programs, real_jit = [], jax.jit

    def jit(fun, *jit_args, **jit_kwargs):
        jitted = real_jit(fun, *jit_args, **jit_kwargs)

        def call(*args, **kwargs):
            if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
                programs.append(jitted.lower(*args, **kwargs).compile())
            return jitted(*args, **kwargs)
        return call

    monkeypatch.setattr(jax, "jit", jit)
    return programs


def test_params_are_born_sharded_without_a_full_copy(monkeypatch):
    """`init_state` makes the state in jitted programs whose every device holds only its own
    shards: by XLA's memory analysis of each program it runs (fsdp=8), the outputs on a device
    are that device's shards and the scratch is under a quarter of the full params (about 1/6
    here). Initialising replicated, on one device or eagerly and resharding after fails here,
    though the result would be laid out the same; so does drawing each parameter's random
    bits whole on every device (JAX_THREEFRY_PARTITIONABLE=0: ~1/2)."""
    config = tiny_config("clip")
    config.model.image.update(width=64, mlp_dim=256)
    config.model.text.update(width=64, mlp_dim=256)
    config.mesh.update(data=1, fsdp=8, tensor=1)
    run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:8])
    programs = _spy_on_jit(monkeypatch)
    state = run.init_state()
    monkeypatch.undo()
    abstract = jax.tree.leaves(run.abstract_state)
    nbytes = lambda shape, dtype: int(np.prod(shape)) * np.dtype(dtype).itemsize  # noqa: E731
    shard_bytes = sum(nbytes(x.sharding.shard_shape(x.shape), x.dtype) for x in abstract)
    params_bytes = sum(nbytes(x.shape, x.dtype) for x in jax.tree.leaves(run.abstract_state.params))
    makers = [c for c in programs if c.out_tree == jax.tree.structure(state)]
    assert makers, "the state was not made by a jitted program"
    for compiled in programs:
        memory = compiled.memory_analysis()
        # outputs: the device's shards (+ 8 bytes a leaf for XLA's output table)
        out, temp = memory.output_size_in_bytes, memory.temp_size_in_bytes
        assert out <= shard_bytes + 16 * len(abstract), (
            f"a program run by init_state outputs {out} bytes on one device; its shards are {shard_bytes}")
        assert temp < params_bytes / 4, (
            f"a program run by init_state needs {temp} bytes of scratch on one device; "
            f"the full params are {params_bytes}")
    for got, want in zip(jax.tree.leaves(makers[-1].output_shardings), abstract):
        assert got.is_equivalent_to(want.sharding, len(want.shape)), (got, want)
    kernel = state.params["image"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]   # ('embed', 'mlp')
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # tensor = 1
    assert kernel.addressable_shards[0].data.shape == (64 // 8, 256)


def test_rules_table_overrides_and_mesh_errors():
    rules = sharding.rules(ml_collections.ConfigDict({"rules": (("vocab", None), ("batch", "data"))}))
    assert rules[0] == ("vocab", None) and ("batch", "data") in rules
    assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == jax.sharding.PartitionSpec(None, "fsdp")
    mesh_cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1))
    assert sharding.mesh_shape(mesh_cfg, 8) == ((4, 2, 1), (1, 1, 1))
    with pytest.raises(sharding.MeshError, match="6 devices but 8 are available"):
        sharding.mesh_shape(ml_collections.ConfigDict(dict(data=3, fsdp=2, tensor=1)), 8)
    with pytest.raises(sharding.MeshError, match="at most one mesh axis may be -1"):
        sharding.mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=-1, tensor=1)), 8)
    dcn = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1, dcn_data=2, dcn_fsdp=1, dcn_tensor=1))
    assert sharding.mesh_shape(dcn, 8) == ((2, 2, 1), (2, 1, 1))


def test_mlp_residual_on_a_3d_mesh_equals_one_device():
    """y + Mlp(y), y = x W with W and the MLP's kernels sharded as the rules say, on data 2 x
    fsdp 2 x tensor 2 vs one device. Before Mlp pinned its output, XLA (jax 0.10.2) permuted
    fc2's output into its kernel's ('tensor', 'fsdp') device order and never back: rows of
    batch shards 1 and 2 mixed (the concat fusion's loss in tests/test_fusion.py)."""
    from mmjax.nn.transformer import Mlp, dense

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, x):    # [b, l, e]
            x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))
            y = dense(16, ("embed", "mlp"), np.float32, np.float32, "w", 1.0)(x)
            return y + Mlp(32, name="mlp")(y)

    x = np.random.default_rng(0).normal(size=(16, 1, 16)).astype(np.float32)
    model = Probe()
    boxed = model.init(jax.random.key(0), x)
    want = model.apply(nn.unbox(boxed), x)
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2, 2), sharding.MESH_AXES)
    rules = sharding.rules()
    params = jax.device_put(nn.unbox(boxed), sharding.logical_shardings(boxed, mesh, rules))
    got = Traced(jax.jit(model.apply), mesh, rules)(params, sharding.replicate(x, mesh))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
