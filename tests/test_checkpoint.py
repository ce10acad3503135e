"""Checkpointer: restore onto other meshes, fallback past corrupt steps, config checks, data position."""

import json
import logging
import os
import signal

import jax
import ml_collections
import numpy as np
import pytest

from mmjax import sharding
from mmjax.config import ConfigError
from mmjax.checkpoint import (Checkpointer, CheckpointError, CheckpointMismatchError,
                              PreemptionNotice, data_state_for)
from mmjax.data import builders, pipeline
from mmjax.data.tokenizers import ClipTokenizer
from mmjax.train.setup import setup
from splits import DIGIT_IMAGES
from tiny_configs import TOKENIZER, tiny_config

DATA = b'{"fake": "grain state"}'


def _config(**model):
    config = tiny_config(**model)
    config.model.image.num_heads = config.model.text.num_heads = 4  # splits over tensor=4
    return config


def _mesh(data=1, fsdp=1, tensor=1, devices=8):
    return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)),
                              devices=jax.devices()[:devices])


def _abstract(config, mesh):
    return setup(config, tokenizer=TOKENIZER, mesh=mesh, check_batch=False).abstract_state


def _state(config, mesh, seed=0):
    """A sharded TrainState whose every leaf is random (so zeros cannot pass for a restore)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jax.device_put(rng.integers(0, 1000, s.shape).astype(s.dtype) if s.dtype.kind in "iu"
                                 else rng.standard_normal(s.shape).astype(s.dtype), s.sharding),
        _abstract(config, mesh))


def _restore(directory, config, abstract, **kwargs):
    ckpt = Checkpointer(directory, config, read_only=kwargs.pop("read_only", False))
    try:
        return ckpt.restore(abstract, **kwargs)
    finally:
        ckpt.close()


def _assert_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _save_steps(directory, config, mesh, steps, keep=5):
    ckpt = Checkpointer(directory, config, keep=keep)
    states = {step: _state(config, mesh, seed=step) for step in steps}
    for step in steps:
        ckpt.save(step, states[step], DATA)
    ckpt.close()
    return states


@pytest.mark.parametrize("target", [dict(fsdp=4, devices=4), dict(devices=1),
                                    dict(data=2, tensor=4), "single_device"])
def test_restores_bitwise_onto_another_mesh(tmp_path, target):
    config = _config()
    saved = _save_steps(tmp_path, config, _mesh(data=2, fsdp=2, tensor=2), [3])[3]
    if target == "single_device":
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                                _abstract(config, _mesh(devices=1)))
    else:
        abstract = _abstract(config, _mesh(**target))
    restored = _restore(tmp_path, config, abstract)
    assert restored.step == 3 and restored.data_state == DATA and restored.changes == []
    _assert_equal(restored.state, saved)
    for leaf, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(abstract)):
        assert leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim), (leaf.sharding, want.sharding)
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(restored.state)) \
        == (target not in ("single_device", dict(devices=1)))


def test_keeps_the_newest_k_and_every_mth_step(tmp_path):
    config, mesh = _config(), _mesh(devices=1)
    ckpt = Checkpointer(tmp_path, config, keep=2, keep_period=4)
    state = _state(config, mesh)
    for step in (2, 4, 6, 8, 10, 11):
        ckpt.save(step, state, DATA)
    ckpt.close()
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [4, 8, 10, 11]


def _truncate_largest_data_file(step_dir):
    path = max(step_dir.glob("state/ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)
    os.truncate(path, path.stat().st_size // 3)


def _delete_manifest(step_dir):
    (step_dir / "state" / "manifest.ocdbt").unlink()


def _tear_config_json(step_dir):
    (step_dir / "config" / "metadata").write_text('{"seed": ')


@pytest.mark.parametrize("corrupt", [_truncate_largest_data_file, _delete_manifest, _tear_config_json])
def test_corrupt_newest_step_falls_back_and_is_kept(tmp_path, caplog, corrupt):
    config, mesh = _config(), _mesh(devices=1)
    states = _save_steps(tmp_path, config, mesh, [2, 4, 6], keep=2)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [4, 6]
    corrupt(tmp_path / "6")
    ckpt = Checkpointer(tmp_path, config, keep=2)
    with caplog.at_level(logging.WARNING, logger="mmjax.checkpoint"):
        restored = ckpt.restore(_abstract(config, mesh))
    assert restored.step == 4
    _assert_equal(restored.state, states[4])
    assert "checkpoint step 6" in caplog.text and "does not restore" in caplog.text
    kept = list((tmp_path / "corrupt").iterdir())
    assert [p.name.split("-")[0] for p in kept] == ["6"]
    assert ckpt.all_steps() == [4]
    # The run goes on: step 6 saves again, and keep-2 then drops only what it should.
    for step in (6, 8):
        assert ckpt.save(step, states[4], DATA)
        ckpt.wait()
    ckpt.close()
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [6, 8]
    assert kept[0].exists()


def test_half_written_step_is_ignored_and_saved_again(tmp_path, caplog):
    config, mesh = _config(), _mesh(devices=1)
    states = _save_steps(tmp_path, config, mesh, [2, 4])
    # What a kill -9 during the async save of step 4 leaves: orbax's temporary directory.
    (tmp_path / "4").rename(tmp_path / "4.orbax-checkpoint-tmp")
    (tmp_path / "4.orbax-checkpoint-tmp" / "commit_success.txt").unlink()
    ckpt = Checkpointer(tmp_path, config)
    with caplog.at_level(logging.WARNING, logger="mmjax.checkpoint"):
        restored = ckpt.restore(_abstract(config, mesh))
    assert restored.step == 2 and "does not restore" not in caplog.text
    _assert_equal(restored.state, states[2])
    assert ckpt.save(4, states[4], DATA)
    ckpt.close()
    assert _restore(tmp_path, config, _abstract(config, mesh)).step == 4


def test_no_restorable_step_is_an_error_that_moves_nothing(tmp_path):
    config, mesh = _config(), _mesh(devices=1)
    _save_steps(tmp_path, config, mesh, [2, 4])
    _delete_manifest(tmp_path / "2")
    _truncate_largest_data_file(tmp_path / "4")
    with pytest.raises(CheckpointError, match=r"step 4: .*; step 2: .*Nothing was moved"):
        _restore(tmp_path, config, _abstract(config, mesh))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["2", "4"]


def test_other_model_config_is_an_error_naming_the_keys(tmp_path):
    config, mesh = _config(), _mesh(devices=1)
    _save_steps(tmp_path, config, mesh, [2])
    other = _config()
    other.model.text.width = 32
    other.model.text.causal = False
    with pytest.raises(CheckpointMismatchError) as error:
        _restore(tmp_path, other, _abstract(other, mesh))
    assert "model.text.width: 16 (checkpoint) vs 32 (config)" in str(error.value)
    assert "model.text.causal: True (checkpoint) vs False (config)" in str(error.value)
    assert "--load_weights_only" in str(error.value)
    assert "train.steps" not in str(error.value)


def test_run_settings_and_compute_dtype_may_change(tmp_path):
    config, mesh = _config(), _mesh(devices=1)
    states = _save_steps(tmp_path, config, mesh, [2])
    other = _config()
    other.train.steps, other.model.remat, other.optim.lr = 50, "full", 0.5
    restored = _restore(tmp_path, other, _abstract(other, mesh))
    _assert_equal(restored.state, states[2])
    assert restored.changes == ["model.remat: 'none' (checkpoint) vs 'full' (config)",
                                "optim.lr: 0.01 (checkpoint) vs 0.5 (config)",
                                "train.steps: 10 (checkpoint) vs 50 (config)"]


def test_weights_only_takes_the_params_and_sets_the_earlier_run_aside(tmp_path):
    config, mesh = _config(), _mesh(devices=1)
    states = _save_steps(tmp_path, config, mesh, [2, 4])
    other = _config()
    other.model.text.causal = False  # same parameter shapes, another model
    ckpt = Checkpointer(tmp_path, other)
    restored = ckpt.restore(_abstract(other, mesh), weights_only=True)
    assert restored.params_only and restored.step == 0 and restored.data_state is None
    assert restored.changes == ["model.text.causal: True (checkpoint) vs False (config)"]
    _assert_equal(restored.state["params"], states[4].params)
    assert ckpt.all_steps() == []
    earlier = [p for p in tmp_path.iterdir() if p.name.startswith("earlier-")]
    assert len(earlier) == 1 and sorted(p.name for p in earlier[0].iterdir()) == ["2", "4"]
    assert ckpt.save(2, states[2], DATA)  # this run's own steps
    ckpt.close()
    assert _restore(tmp_path, other, _abstract(other, mesh)).step == 2


def test_evaluation_reads_params_only_and_never_moves_anything(tmp_path):
    config, mesh = _config(), _mesh(devices=1)
    states = _save_steps(tmp_path, config, mesh, [2, 4])
    _delete_manifest(tmp_path / "4")
    restored = _restore(tmp_path, config, _abstract(config, mesh), read_only=True,
                        params_only=True)
    assert restored.step == 2 and set(restored.state) == {"params"}
    _assert_equal(restored.state["params"], states[2].params)
    assert (tmp_path / "4").is_dir() and not (tmp_path / "corrupt").exists()


def test_sigterm_sets_the_notice_and_close_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    notice = PreemptionNotice()
    assert not notice(1)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing
    assert notice(2)
    quiet = PreemptionNotice()
    quiet.close()
    notice.close()  # after a notice, SIGTERM stays ignored until the process exits
    assert signal.getsignal(signal.SIGTERM) == notice._handle
    signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    builders.prepare("digit_captions", str(path))
    return str(path)


def _digits(data_dir, batch_size, index, count, state=None):
    spec = {"image": jax.ShapeDtypeStruct((28, 28, 1), np.float32),
            "text": jax.ShapeDtypeStruct((8,), np.int32)}
    it = pipeline.batches("digit_captions", data_dir=data_dir, split="train", batch_size=batch_size,
                          tokenizer=ClipTokenizer(), spec=spec, seed=3, process_index=index,
                          process_count=count, image_options=DIGIT_IMAGES)
    if state is not None:
        it.set_state(state)
    return it


def _global_batch(iterators):
    parts = [next(it) for it in iterators]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("image", "text")}


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 4), (2, 3), (2, 2)])
def test_data_position_resumes_on_another_process_count(data_dir, before, after):
    batch, steps = 24, 5
    old = [_digits(data_dir, batch, p, before) for p in range(before)]
    for _ in range(steps):
        _global_batch(old)
    saved = json.loads(json.dumps({"iterators": [it.get_state().decode() for it in old]}))
    want = _global_batch(old)
    new = [_digits(data_dir, batch, q, after, data_state_for(saved, q, after)) for q in range(after)]
    got = _global_batch(new)
    for key in want:   # the same rows in the same order
        np.testing.assert_array_equal(got[key], want[key])


def test_a_batch_the_processes_cannot_split_is_an_error(data_dir):
    with pytest.raises(ConfigError, match="batch_size=3 does not split over 2 processes"):
        _digits(data_dir, 3, 0, 2)


def test_a_key_newer_than_the_checkpoint_matters_only_off_its_default():
    from mmjax.checkpoint import config_differences
    from mmjax.config import defaults
    current = json.loads(defaults().to_json())
    saved = json.loads(defaults().to_json())
    del saved["model"]["classify"]            # written before mmjax had the classify task
    assert config_differences(saved, current) == ([], [])
    current["model"]["classify"]["num_classes"] = 3
    must, _ = config_differences(saved, current)
    assert must == ["model.classify.num_classes: '<absent>' (checkpoint) vs 3 (config)"]
