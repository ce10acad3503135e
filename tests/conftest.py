"""Test-session setup: 8 simulated CPU devices, configured before anything imports jax."""

import os

_DEVICE_FLAG = '--xla_force_host_platform_device_count=8'
# XLA:CPU aborts a process whose simulated devices do not all reach a collective within 40 s;
# on 2 busy cores (two test workers, each with `mmjax` subprocesses) they can be later than that.
_TIMEOUT_FLAG = '--xla_cpu_collective_call_terminate_timeout_seconds=600'
_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
          if not f.startswith(('--xla_force_host_platform_device_count',
                               '--xla_cpu_collective_call_terminate_timeout_seconds'))]
os.environ['XLA_FLAGS'] = ' '.join(_flags + [_TIMEOUT_FLAG, _DEVICE_FLAG])
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# A persistent XLA compilation cache shared by this session's tests and every `mmjax`
# subprocess they start (which inherit the environment): the same small steps compile once.
# .ci/run sets one directory for all of its pytest steps; otherwise a fresh one per session,
# so a stale cache never outlives the code that filled it.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='mmjax-test-xla-cache-')
    atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
# Cache every compile worth reading back (JAX's default skips those under 1 s).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import filelock  # noqa: E402
import pytest  # noqa: E402

SMOKE_CLIP_STEPS = 60


def run_mmjax(*args, timeout=900):
    """`mmjax ARGS` in a fresh process on one CPU device (as a user runs it); its JSON line."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": " ".join(flags)}, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def shared_dir(tmp_path_factory, name):
    """(folder, lock) shared by every pytest-xdist worker of this session (the workers' temp
    folders sit side by side under one root): what one worker makes there, the others reuse."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root / name, filelock.FileLock(str(root / f"{name}.lock"))


def made_once(tmp_path_factory, name, make):
    """The shared folder `name`, after `make(folder)` ran in it once this session (under the
    lock, by whichever xdist worker came first; a 'done' file marks it finished)."""
    folder, lock = shared_dir(tmp_path_factory, name)
    with lock:
        if not (folder / "done").exists():
            folder.mkdir(parents=True, exist_ok=True)
            make(folder)
            (folder / "done").touch()
    return folder


@pytest.fixture(scope="session")
def trained_smoke_clip(tmp_path_factory):
    """The smoke CLIP (one-channel digits) trained SMOKE_CLIP_STEPS steps by `mmjax train`,
    well above chance, shared by the export and evaluation parity tests (trained once per
    session, whichever worker asks first): (workdir, data_dir). Tests may add datasets to the
    data dir; none changes the run."""
    folder = made_once(tmp_path_factory, "trained_smoke_clip",
                       lambda folder: _train_smoke_clip(folder / "data", folder / "run"))
    return str(folder / "run"), str(folder / "data")


def _train_smoke_clip(data_dir, workdir):
    run_mmjax("train", "--config", "configs/smoke_clip.py", "--workdir", str(workdir), "--data_dir",
              str(data_dir), f"--config.train.steps={SMOKE_CLIP_STEPS}", "--config.train.batch_size=64",
              f"--config.train.log_every={SMOKE_CLIP_STEPS}", "--config.train.eval_every=1000",
              "--config.optim.warmup_steps=5")

