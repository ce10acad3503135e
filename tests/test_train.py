"""Train step: a tiny model overfits a fixed batch; accumulation keeps all negatives; bf16 trains."""

import json

import jax
import numpy as np
import pytest

from mmjax import sharding
from mmjax.losses import infonce_loss
from mmjax.train.setup import setup
from mmjax.train.step import make_accumulated_grads, make_loss_fn
from tiny_configs import TOKENIZER, tiny_batch, tiny_config


def _setup(config, devices=1):
    run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:devices])
    return run.mesh, run.model, run.init_state(), run.train_step()


@pytest.mark.parametrize("task", ["clip", "mlm", "clip+mlm"])
def test_tiny_model_overfits_a_fixed_batch(task):
    config = tiny_config(task)
    config.train.steps = 80
    mesh, _, state, step = _setup(config)
    batch = tiny_batch(config)
    key = "text"
    b, length = batch[key].shape   # learnable text: a masked token follows from its position
    if task != "clip":
        batch[key][:, 1:-1] = 5 + np.arange(1, length - 1) % 50
    if task == "clip+mlm":         # ... and from the row, so captions still tell pairs apart
        batch[key][:, 1] = 5 + np.arange(b)
    batch = sharding.global_batch(batch, mesh)
    history = []
    for _ in range(config.train.steps):
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    assert int(state.step) == config.train.steps
    first, last = history[0], {k: np.mean([h[k] for h in history[-5:]]) for k in history[0]}
    if task != "mlm":
        assert last["contrastive_loss"] < 0.05 * first["contrastive_loss"], (first, last)
    if task != "clip":  # re-masked every step, so a few new targets each time
        assert last["mlm_loss"] < 0.3 * first["mlm_loss"], (first, last)


def test_gradient_accumulation_keeps_every_example_as_a_negative():
    """k microbatches with gradient caching == one pass over the whole batch (InfoNCE)."""
    config = tiny_config("clip")
    mesh, model, state, _ = _setup(config, devices=8)
    batch = sharding.global_batch(tiny_batch(config), mesh)
    rng = jax.random.PRNGKey(0)
    terms = setup(config, tokenizer=TOKENIZER).task.loss_terms(model, mesh)
    (loss, _), grads = jax.jit(jax.value_and_grad(make_loss_fn(terms), has_aux=True))(
        state.params, batch, rng)
    (loss4, _), grads4 = jax.jit(make_accumulated_grads(terms, 4))(state.params, batch, rng)
    np.testing.assert_allclose(loss4, loss, rtol=1e-5)
    # per leaf, relative to its own scale (an element near zero carries the summation order's
    # rounding: 2e-5 absolute on a 0.14 entry of a leaf whose entries reach 17, on this CPU)
    for a, b in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads)):
        assert np.linalg.norm(np.float64(a) - b) <= 1e-5 * np.linalg.norm(np.float64(b))
    # a naive per-microbatch loss sees only b/k negatives and differs
    micro = jax.tree.map(lambda x: np.asarray(x)[::4], batch)
    naive = infonce_loss(*model.apply({"params": state.params}, micro["image"], micro["text"])[:3])
    assert abs(float(naive) - float(loss)) > 1e-3


def test_accumulation_step_trains():
    config = tiny_config("clip+mlm")
    config.train.update(grad_accum_steps=2, steps=30)
    mesh, _, state, step = _setup(config)
    batch = sharding.global_batch(tiny_batch(config), mesh)
    first = None
    for _ in range(30):
        state, metrics = step(state, batch)
        first = first or float(metrics["loss"])
    assert float(metrics["loss"]) < 0.7 * first


def _train_fixed_batch(config, steps):
    mesh, _, state, step = _setup(config)
    batch = sharding.global_batch(tiny_batch(config), mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)   # the state is donated: always keep the new one
        losses.append(float(metrics["loss"]))
    return state, losses


def test_bfloat16_compute_with_float32_params_trains():
    """bf16 compute keeps f32 params and follows the f32 run's loss curve."""
    configs = {dtype: tiny_config("clip", dtype=dtype) for dtype in ("bfloat16", "float32")}
    state, bf16 = _train_fixed_batch(configs["bfloat16"], 40)
    assert {x.dtype.name for x in jax.tree.leaves(state.params)} == {"float32"}
    _, f32 = _train_fixed_batch(configs["float32"], 40)
    assert bf16[-1] < 0.3 * bf16[0], bf16
    assert abs(bf16[-1] - f32[-1]) < 0.1 * f32[0], (bf16[-1], f32[-1])


def test_a_non_finite_update_is_skipped_and_counted():
    config = tiny_config("clip")
    mesh, _, state, step = _setup(config)
    good = tiny_batch(config)
    bad = {**good, "image": np.full_like(good["image"], np.nan)}
    before = jax.device_get(state.params)
    state, metrics = step(state, sharding.global_batch(bad, mesh))
    assert not np.isfinite(float(metrics["loss"])) and int(metrics["skipped_steps"]) == 1
    after = jax.device_get(state.params)
    assert int(state.step) == 1
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    state, metrics = step(state, sharding.global_batch(good, mesh))
    assert int(metrics["skipped_steps"]) == 0 and np.isfinite(float(metrics["loss"]))
    moved = jax.device_get(state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(before)))


def test_mfu_is_flops_per_second_over_the_chips_peak(monkeypatch):
    from mmjax.train import mfu
    monkeypatch.setattr(mfu, "chip_peak", lambda device, dtype, stated: (2e12, "table"))
    meter = mfu.MFU(flops_per_step=1e12, dtype="float32")
    assert meter(0.5)["train/mfu"] == pytest.approx(1e12 * 0.5 / (meter.chips * 2e12))
    assert mfu.MFU(flops_per_step=None)(1.0) == {}


def test_mfu_peaks_come_from_the_exact_device_kind_or_none(monkeypatch):
    import types
    from mmjax.train import mfu

    def kind(name, platform="gpu"):
        return types.SimpleNamespace(device_kind=name, platform=platform)
    assert mfu.chip_peak(kind("TPU v5 lite", "tpu")) == (197e12, "TPU v5 lite data sheet, bf16 dense")
    assert mfu.chip_peak(kind("NVIDIA H100 80GB HBM3"))[0] == 989e12
    assert mfu.chip_peak(kind("NVIDIA H100 PCIe"))[0] == 756e12      # not the SXM card's peak
    peak, why = mfu.chip_peak(kind("NVIDIA B300 SXM6"))
    assert peak is None and "peak_flops_per_chip" in why
    assert mfu.chip_peak(kind("NVIDIA B300 SXM6"), stated=2.25e15) == (2.25e15, "train.peak_flops_per_chip")
    monkeypatch.setattr(mfu, "chip_peak", lambda device, dtype, stated: (None, "no MFU"))
    assert mfu.MFU(flops_per_step=1e12)(1.0) == {}


def test_the_cpu_peak_is_measured_once_per_cpu_and_stored(monkeypatch, tmp_path):
    import types
    from mmjax.train import mfu
    monkeypatch.setenv("MMJAX_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(mfu, "measured_peak", lambda *a: calls.append(a) or 1.5e11)
    cpu = types.SimpleNamespace(device_kind="cpu", platform="cpu")
    first = mfu.chip_peak(cpu)
    assert first[0] == 1.5e11 and "calibration" in first[1] and len(calls) == 1
    assert calls[0][1:] == (mfu.CALIBRATION_SIZE, mfu.CALIBRATION_REPS)
    assert mfu.chip_peak(cpu) == first and len(calls) == 1          # read back, not measured
    stored = json.loads((tmp_path / "cpu_peaks.json").read_text())
    assert [v["flops"] for v in stored.values()] == [1.5e11]
    mfu.chip_peak(cpu, "bfloat16")                                  # another dtype: its own entry
    assert len(calls) == 2
