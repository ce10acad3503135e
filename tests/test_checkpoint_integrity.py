"""Hidden corruption: flipped bytes in a step's array data are caught by the checksums saved
with it (the fallback path of an unreadable step), `mmjax verify` names the array, and an
export refuses the step."""

import hashlib
import json
import logging
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from mmjax import checksums, cli, export, sharding
from mmjax.checkpoint import Checkpointer
from mmjax.errors import CheckpointError
from mmjax.train.setup import setup
from tiny_configs import TOKENIZER, tiny_config

DATA = b'{"fake": "grain state"}'


def _abstract(config, devices, **axes):
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1) | axes),
                              devices=jax.devices()[:devices])
    return setup(config, tokenizer=TOKENIZER, mesh=mesh, check_batch=False).abstract_state


def _state(abstract, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jax.device_put(
        rng.integers(0, 1000, s.shape).astype(s.dtype) if s.dtype.kind in "iu"
        else rng.standard_normal(s.shape).astype(s.dtype), s.sharding), abstract)


def _indirect_values(state_dir):
    """[(array name, data file, offset, length)] of the chunks OCDBT stores outside its
    b-tree nodes (larger than 1 KiB), read from the step's manifest."""
    kv = ts.KvStore.open({"driver": "file", "path": f"{state_dir}/"}).result()

    def walk(location, prefix=b""):
        node = ts.ocdbt.dump(kv, node=location).result()
        for entry in node["entries"]:
            if node.get("height", 0):
                common = entry.get("subtree_common_prefix") or b""
                yield from walk(entry["location"], prefix + common)
            elif entry.get("indirect_value"):
                reference = entry["indirect_value"].removeprefix("value:")
                folder, file, offset, length = reference.split(":")
                key = (prefix + entry["key"]).decode().rsplit("/", 1)[0]
                yield key.replace(".", "/"), state_dir / folder / file, int(offset), int(length)

    return list(walk(ts.ocdbt.dump(kv).result()["versions"][-1]["root"]["location"]))


def _flip_bytes_in_the_largest_array_file(step_dir, count=64, under=""):
    """Flips `count` bytes in the middle of the largest array chunk of the step's largest data
    file (of the arrays whose names start with `under`); returns that array's name."""
    values = [v for v in _indirect_values(step_dir / "state") if v[0].startswith(under)]
    largest = max({path for _, path, _, _ in values}, key=lambda p: p.stat().st_size)
    name, path, offset, length = max((v for v in values if v[1] == largest), key=lambda v: v[3])
    data = bytearray(path.read_bytes())
    start = offset + (length - count) // 2
    data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
    path.write_bytes(bytes(data))
    return name


def _snapshot(directory):
    """{path: (mtime, sha256)} of every file under `directory`."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns,
                                            hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _verify(workdir, capsys, *extra):
    code = cli.main(["verify", "--workdir", str(workdir), *extra])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def corrupted(tmp_path):
    """Steps 2, 4 and 6 of a tiny CLIP under tmp_path/checkpoints, with bytes flipped in a
    parameter of step 6: (config, the abstract state it was saved from, {step: state}, the
    flipped array's name)."""
    config = tiny_config()
    saved_on = _abstract(config, devices=1)       # chunks over 1 KiB: stored outside the b-tree
    states = {step: _state(saved_on, step) for step in (2, 4, 6)}
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory, config, keep=3)
    for step, state in states.items():
        ckpt.save(step, state, DATA)
    ckpt.close()
    return config, saved_on, states, _flip_bytes_in_the_largest_array_file(directory / "6",
                                                                           under="params/")


def test_flipped_bytes_fall_back_to_the_previous_step_and_verify_names_the_array(
        tmp_path, capsys, caplog, corrupted):
    config, saved_on, states, name = corrupted
    directory = tmp_path / "checkpoints"
    # The corruption is hidden: orbax reads the step without an error and gets other values.
    with ocp.StandardCheckpointer() as plain:
        read = plain.restore(directory / "6" / "state", saved_on)
    flat, saved = (jax.tree_util.tree_flatten_with_path(tree)[0] for tree in (read, states[6]))
    assert [checksums.array_name(p) for (p, x), (_, y) in zip(flat, saved)
            if not np.array_equal(x, y)] == [name]

    before = _snapshot(tmp_path)
    code, report = _verify(tmp_path, capsys)
    assert code == 1 and not report["ok"]
    assert [(s["step"], s["ok"], s.get("bad_arrays")) for s in report["steps"]] == \
        [(2, True, None), (4, True, None), (6, False, [name])]
    assert report["steps"][0]["arrays"] == len(jax.tree.leaves(saved_on))
    assert _snapshot(tmp_path) == before              # verifying changes nothing

    ckpt = Checkpointer(directory, config, keep=3)
    with caplog.at_level(logging.WARNING, logger="mmjax.checkpoint"):
        restored = ckpt.restore(_abstract(config, devices=8, data=2, fsdp=2, tensor=2))
    assert restored.step == 4 and restored.data_state == DATA
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 restored.state, states[4])
    lines = [r.getMessage() for r in caplog.records if "checkpoint step 6" in r.getMessage()]
    assert len(lines) == 1 and "does not restore" in lines[0] and name in lines[0], lines
    assert "using step 4 instead; moved it to" in lines[0] and "/corrupt/6-" in lines[0]
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()
    (kept,) = (directory / "corrupt").iterdir()
    assert kept.name.startswith("6-") and (kept / "state").is_dir()   # kept for inspection
    code, report = _verify(tmp_path, capsys)
    assert code == 0 and report["ok"] and [s["step"] for s in report["steps"]] == [2, 4]


def test_an_export_of_a_corrupted_step_names_the_array_and_older_checkpoints_export(
        tmp_path, capsys, corrupted):
    _, _, states, name = corrupted
    out = tmp_path / "export"
    code = cli.main(["export", "--workdir", str(tmp_path), "--format", "params", "--out", str(out)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and not out.exists()
    assert error.startswith("mmjax: error: checkpoint step 6 ") and name in error, error
    assert "mmjax verify --workdir" in error and "--step" in error, error
    config, step, params = export.read_checkpoint(tmp_path, step=4)   # an intact older step
    assert step == 4
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)),
                 params, states[4].params)
    # A step saved before checksums existed exports as it reads: nothing to check it against.
    shutil.rmtree(tmp_path / "checkpoints" / "6" / "checksums")
    assert export.read_checkpoint(tmp_path)[1] == 6


# Orbax's failed reads leave TensorStore callbacks aimed at its closed event loop (also
# without mmjax's checks); reading a truncated file array by array makes many of them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checksums_agree_across_meshes_and_verify_names_bad_items_and_unreadable_arrays(
        tmp_path, capsys):
    """A clean step checks out on another mesh (sharded save, single-device restore), in a
    params-only (evaluation) restore and in `mmjax verify`; verify names a changed JSON item
    and the arrays of a truncated data file."""
    config = tiny_config()
    abstract = _abstract(config, devices=2, fsdp=2)
    state = _state(abstract, 0)
    directory = tmp_path / "checkpoints"
    ckpt = Checkpointer(directory, config)
    ckpt.save(3, state, DATA)
    ckpt.close()
    one = _abstract(config, devices=1)
    ckpt = Checkpointer(directory, config, read_only=True)
    assert ckpt.restore(one).step == 3
    assert ckpt.restore(one, params_only=True).step == 3
    ckpt.close()
    assert _verify(tmp_path, capsys, "--step", "3")[0] == 0
    assert cli.main(["verify", "--workdir", str(tmp_path), "--step", "5"]) == 2
    assert "no checkpoint step 5" in capsys.readouterr().err
    data = directory / "3" / "data" / "metadata"
    data.write_text(data.read_text().replace("grain state", "grain_state"))
    code, report = _verify(tmp_path, capsys)
    assert code == 1 and report["steps"][0]["bad_items"] == ["data"]
    ckpt = Checkpointer(directory, config, read_only=True)
    with pytest.raises(CheckpointError, match="'data' item does not match"):
        ckpt.restore(one)
    ckpt.close()
    name, path, offset, _ = max(_indirect_values(directory / "3" / "state"), key=lambda v: v[3])
    path.write_bytes(path.read_bytes()[:offset])
    code, report = _verify(tmp_path, capsys)
    assert code == 1 and name in report["steps"][0]["unreadable"], report
