"""End to end: `mmjax train` killed, preempted or with a corrupt checkpoint resumes exactly."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from mmjax.data import builders
from mmjax.metrics import drop_records_after

# A tiny CLIP on the built-in digits: a run takes seconds once compiled (the compilation
# cache is shared by every run of the module).
ARGS = ["--config.train.steps=12", "--config.train.checkpoint_every=4",
        "--config.train.log_every=1", "--config.train.eval_every=1000",
        "--config.train.batch_size=16", "--config.eval.batch_size=100",
        "--config.model.embed_dim=16", "--config.model.image.depth=1",
        "--config.model.image.width=32", "--config.model.image.mlp_dim=64",
        "--config.model.image.num_heads=2", "--config.model.text.depth=1",
        "--config.model.text.width=32", "--config.model.text.mlp_dim=64",
        "--config.model.text.num_heads=2"]
TIMEOUT = 600


def test_drop_records_after_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "train/loss": 1.0 / s} for s in (1, 2, 3, 4)] + [{"step": 4, "eval/a": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "tr')
    drop_records_after(path, 3)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    drop_records_after(path, 3)
    assert len(path.read_text().splitlines()) == 3
    drop_records_after(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    builders.prepare("digit_captions", str(data_dir))
    return dict(os.environ, JAX_PLATFORMS="cpu", MMJAX_TEST_DATA_DIR=str(data_dir),
                XLA_FLAGS="--xla_force_host_platform_device_count=2",
                JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _command(workdir, env, *extra):
    return [sys.executable, "-m", "mmjax.cli", "train", "--workdir", str(workdir),
            "--data_dir", env["MMJAX_TEST_DATA_DIR"], *ARGS, *extra]


def _run(workdir, env, *extra):
    result = subprocess.run(_command(workdir, env, *extra), env=env, capture_output=True,
                            text=True, timeout=TIMEOUT)
    return result.returncode, result.stdout + result.stderr


def _start(workdir, env, *extra, log="run.log", process_env=None):
    out = open(pathlib.Path(workdir).parent / f"{pathlib.Path(workdir).name}.{log}", "w")
    return subprocess.Popen(_command(workdir, env, *extra), env=process_env or env,
                            stdout=out, stderr=subprocess.STDOUT), out.name


def _wait_for(condition, procs, what):
    deadline = time.time() + TIMEOUT
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _records(workdir):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _losses(workdir):
    """{step: train/loss}, checking that each step was logged once."""
    steps = [r["step"] for r in _records(workdir) if "train/loss" in r]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {r["step"]: r["train/loss"] for r in _records(workdir) if "train/loss" in r}


def _resumed_at(output):
    line = next(line for line in output.splitlines() if "resuming at step" in line)
    return int(line.split("resuming at step ")[1].split(";")[0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """An uninterrupted run: (workdir, {step: loss})."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    rc, output = _run(workdir, env)
    assert rc == 0, output
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, 13))
    return workdir, losses


@pytest.mark.slow
def test_kill_9_between_checkpoints_then_the_same_command_resumes_bitwise(tmp_path, env, reference):
    workdir = tmp_path / "run"
    proc, log = _start(workdir, env)
    _wait_for(lambda: (workdir / "checkpoints" / "4").is_dir() and max(_losses(workdir)) > 4,
              [proc], "checkpoint 4 and step 5")
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    logged = max(_losses(workdir))
    rc, output = _run(workdir, env)
    assert rc == 0, output
    resumed = _resumed_at(output)
    assert resumed in (4, 8) and resumed < logged, (resumed, logged)  # steps ran twice
    assert _losses(workdir) == reference[1]  # float32 values, bitwise (JSON keeps every bit)


@pytest.mark.slow
def test_sigterm_twice_saves_exits_0_and_resumes_exactly(tmp_path, env, reference):
    workdir = tmp_path / "run"
    proc, log = _start(workdir, env)
    _wait_for(lambda: len(_losses(workdir)) >= 2, [proc], "step 2")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a second notice during the save changes nothing
    assert proc.wait(timeout=TIMEOUT) == 0, pathlib.Path(log).read_text()
    output = pathlib.Path(log).read_text()
    assert "preempted: saved step" in output, output
    saved = int(output.split("preempted: saved step ")[1].split(";")[0])
    assert 2 <= saved < 12 and (workdir / "checkpoints" / str(saved)).is_dir()
    assert max(_losses(workdir)) <= saved
    rc, output = _run(workdir, env)
    assert rc == 0, output
    assert _resumed_at(output) == saved
    assert _losses(workdir) == reference[1]


def _truncate_a_data_file(step_dir):
    path = max(step_dir.glob("state/ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)
    os.truncate(path, path.stat().st_size // 2)


def _delete_the_manifest(step_dir):
    (step_dir / "state" / "manifest.ocdbt").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [_truncate_a_data_file, _delete_the_manifest])
def test_corrupt_newest_checkpoint_warns_resumes_from_the_previous_and_is_kept(
        tmp_path, env, reference, corrupt):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    corrupt(workdir / "checkpoints" / "12")
    rc, output = _run(workdir, env)
    assert rc == 0, output
    assert "checkpoint step 12" in output and "does not restore" in output, output
    assert _resumed_at(output) == 8
    kept = list((workdir / "checkpoints" / "corrupt").iterdir())
    assert [p.name.split("-")[0] for p in kept] == ["12"]
    assert (workdir / "checkpoints" / "8").is_dir() and (workdir / "checkpoints" / "12").is_dir()
    assert _losses(workdir) == reference[1]


@pytest.mark.slow
def test_other_model_config_is_an_error_unless_weights_only(tmp_path, env, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    rc, output = _run(workdir, env, "--config.model.text.width=48")
    assert rc == 2 and output.strip().splitlines()[-1].startswith("mmjax: error:"), output
    assert "model.text.width: 32 (checkpoint) vs 48 (config)" in output
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["text"]["width"] == 32  # the refused run left the run's config alone
    # Same parameter shapes, another model: start it from the checkpoint's parameters.
    rc, output = _run(workdir, env, "--config.model.text.causal=False", "--load_weights_only")
    assert rc == 0, output
    assert "from the parameters of another config's checkpoint" in output
    checkpoints = workdir / "checkpoints"
    earlier = [p for p in checkpoints.iterdir() if p.name.startswith("earlier-")]
    assert len(earlier) == 1 and sorted(p.name for p in earlier[0].iterdir()) == ["12", "4", "8"]
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["12", "4", "8"]
    assert len(list(workdir.glob("metrics.jsonl.earlier-*"))) == 1
    assert sorted(_losses(workdir)) == list(range(1, 13))
    assert _losses(workdir)[1] != reference[1][1]  # a fresh optimizer on the trained params
    rc, output = _run(workdir, env, "--config.model.text.causal=False", "--load_weights_only")
    assert rc == 0 and "already trained to step 12" in output, output


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir, env):
    """Starts a 2-process x 4-CPU-device run of 6 steps (checkpoints only when told)."""
    port, procs, logs = _free_port(), [], []
    process_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    for i in range(2):
        proc, log = _start(workdir, env, "--config.train.steps=6",
                           "--config.train.checkpoint_every=1000", "--coordinator",
                           f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i),
                           log=f"process{i}.log", process_env=process_env)
        procs.append(proc)
        logs.append(log)
    return procs, logs


def _finish(procs, logs):
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=TIMEOUT) == 0, pathlib.Path(log).read_text()[-3000:]
    return pathlib.Path(logs[0]).read_text()


@pytest.mark.slow
def test_two_processes_agree_on_a_step_save_on_sigterm_and_resume_exactly(tmp_path, env):
    reference = tmp_path / "reference"
    _finish(*_two_processes(reference, env))
    workdir = tmp_path / "run"
    procs, logs = _two_processes(workdir, env)
    _wait_for(lambda: len(_losses(workdir)) >= 2, procs, "step 2")
    procs[1].send_signal(signal.SIGTERM)  # one host is preempted; both must stop together
    time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    output = _finish(procs, logs)
    saved = int(output.split("preempted: saved step ")[1].split(";")[0])
    assert 2 <= saved < 6 and sorted(os.listdir(workdir / "checkpoints")) == [str(saved)]
    data = json.loads((workdir / "checkpoints" / str(saved) / "data" / "metadata").read_text())
    assert data["process_count"] == 2 and len(set(data["iterators"])) == 1   # a global position
    output = _finish(*_two_processes(workdir, env))
    assert _resumed_at(output) == saved
    assert _losses(workdir) == _losses(reference)


@pytest.mark.slow
def test_fine_tune_killed_mid_run_resumes_bitwise(tmp_path, env, reference):
    """configs/finetune_digits.py on the reference CLIP run's image tower, its blocks locked:
    a classifier head, layer-wise rates, early-stopping bookkeeping; kill -9, resume, the
    same losses bitwise and the same best step."""
    tune = ["--config", str(pathlib.Path(__file__).parents[1] / "configs" / "finetune_digits.py"), f"--config.init.source={reference[0]}",
            "--config.optim.frozen=('image/encoder/*',)", "--config.train.eval_every=4",
            "--config.optim.warmup_steps=2"]
    uninterrupted = tmp_path / "uninterrupted"
    rc, output = _run(uninterrupted, env, *tune)
    assert rc == 0, output
    workdir = tmp_path / "run"
    proc, log = _start(workdir, env, *tune)
    _wait_for(lambda: (workdir / "checkpoints" / "4").is_dir() and max(_losses(workdir), default=0) > 4,
              [proc], "checkpoint 4 and step 5")
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    rc, output = _run(workdir, env, *tune)
    assert rc == 0, output
    assert _resumed_at(output) in (4, 8)
    assert _losses(workdir) == _losses(uninterrupted)
    best = [json.loads((w / "best.json").read_text()) for w in (workdir, uninterrupted)]
    assert best[0] == best[1] and best[0]["step"] in (4, 8, 12)
