"""End to end over real processes: the global batch is a function of the seed and the step
alone, so `clip+mlm` logs the same losses on 1, 2 or 3 hosts (jax.distributed, gloo), and a
run killed with -9 resumes on another number of hosts where it stopped."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from mmjax.data import builders

# configs/smoke_clip_mlm.py, shrunk: 6 devices in all, a global batch of 24.
ARGS = ["--config", "configs/smoke_clip_mlm.py",
        "--config.train.steps=6", "--config.train.checkpoint_every=2",
        "--config.train.log_every=1", "--config.train.eval_every=1000",
        "--config.train.batch_size=24", "--config.eval.batch_size=120",
        "--config.model.embed_dim=16", "--config.model.image.depth=1",
        "--config.model.image.width=32", "--config.model.image.mlp_dim=64",
        "--config.model.image.num_heads=2", "--config.model.text.depth=1",
        "--config.model.text.width=32", "--config.model.text.mlp_dim=64",
        "--config.model.text.num_heads=2"]
DEVICES = 6
TIMEOUT = 600


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    for name in ("digit_captions", "prose"):
        builders.prepare(name, str(data_dir))
    return dict(os.environ, JAX_PLATFORMS="cpu", MMJAX_TEST_DATA_DIR=str(data_dir),
                JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, env, processes, args=ARGS):
    """`processes` x (6 / processes) CPU devices running the same command (`args`: its config)."""
    port, procs, logs = _free_port(), [], []
    pathlib.Path(workdir).parent.mkdir(parents=True, exist_ok=True)
    for i in range(processes):
        command = [sys.executable, "-m", "mmjax.cli", "train", "--workdir", str(workdir),
                   "--data_dir", env["MMJAX_TEST_DATA_DIR"], *args]
        if processes > 1:
            command += ["--coordinator", f"127.0.0.1:{port}", "--num_processes", str(processes),
                        "--process_id", str(i)]
        log = pathlib.Path(workdir).parent / f"{pathlib.Path(workdir).name}.p{processes}.{i}.log"
        flags = f"--xla_force_host_platform_device_count={DEVICES // processes}"
        procs.append(subprocess.Popen(command, env=dict(env, XLA_FLAGS=flags),
                                      stdout=open(log, "w"), stderr=subprocess.STDOUT))
        logs.append(log)
    return procs, logs


def _finish(procs, logs):
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    return logs[0].read_text()


def _kill_after_checkpoint_2(workdir, procs, logs):
    """Waits until the run `procs` (each writing to `logs`) has saved checkpoint 2 and logged
    step 3, then kills every process with -9."""
    deadline = time.time() + TIMEOUT
    while not (workdir / "checkpoints" / "2").is_dir() or len(_losses_or_none(workdir)) < 3:
        assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _losses(workdir):
    """{step: {train/*loss*: value}}."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("train/") and "loss" in k}
            for r in records if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    """processes -> {step: losses} of an uninterrupted run on that many hosts (cached)."""
    runs = {}

    def losses(processes):
        if processes not in runs:
            workdir = tmp_path_factory.mktemp(f"hosts{processes}") / "run"
            _finish(*_start(workdir, env, processes))
            runs[processes] = _losses(workdir)
        return runs[processes]
    return losses


def _assert_same_up_to_rounding(losses, reference, steps):
    """The same rows in the same order: the MLM masks (drawn per row of the global batch) and
    the contrastive loss agree; only the rounding of cross-host sums differs (~1 ulp)."""
    for step in steps:
        for key, value in reference[step].items():
            assert losses[step][key] == pytest.approx(value, rel=1e-6), (step, key)


@pytest.mark.slow
def test_clip_mlm_logs_the_same_losses_on_one_and_three_hosts(uninterrupted):
    reference, losses = uninterrupted(1), uninterrupted(3)
    assert sorted(reference) == list(range(1, 7)) and "train/mlm_loss" in reference[1]
    assert losses.keys() == reference.keys()
    _assert_same_up_to_rounding(losses, reference, losses)


@pytest.mark.slow
def test_killed_on_two_hosts_resumes_on_three_bitwise(tmp_path, env, uninterrupted):
    """Two hosts log the 1-host losses; killed with -9, the run resumes on three hosts from
    its last checkpoint and continues bitwise as an uninterrupted 3-host run."""
    workdir = tmp_path / "run"
    procs, logs = _start(workdir, env, 2)
    _kill_after_checkpoint_2(workdir, procs, logs)
    before = _losses(workdir)   # what the two hosts logged: as on one host
    _assert_same_up_to_rounding(before, uninterrupted(1), before)
    output = _finish(*_start(workdir, env, 3))
    resumed_at = int(re.search(r"resuming at step (\d+)", output).group(1))
    assert resumed_at in (2, 4)
    losses, three = _losses(workdir), uninterrupted(3)
    for step in range(resumed_at + 1, 7):
        assert losses[step] == three[step], step   # bitwise: the 3-host run from scratch


def _losses_or_none(workdir):
    try:
        return _losses(workdir)
    except FileNotFoundError:
        return {}
