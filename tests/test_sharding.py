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
    """Each leaf within `rtol` relative to its own scale: |a - b| / |b| (L2 norms)."""
    def close(path, x, y):
        err = np.linalg.norm(np.float64(x) - y) / max(np.linalg.norm(np.float64(y)), 1e-30)
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
@pytest.mark.parametrize("task", ["clip", "mlm", "clip+mlm"])
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


def test_params_are_born_sharded_without_a_full_copy():
    """The jitted init writes each shard in place: no leaf is fully on one device."""
    config = tiny_config("clip")
    _, state = _build(config, (1, 8, 1))
    kernel = state.params["image"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]   # ('embed', 'mlp')
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # tensor = 1
    assert kernel.addressable_shards[0].data.shape == (16 // 8, 32)


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
