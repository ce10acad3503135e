"""launch/: the Cloud TPU and SLURM launchers, without gcloud, TPUs or SLURM.

Dry runs print the commands the launchers would run; those are parsed and checked. Fakes on
PATH stand in for gcloud / srun / scancel to drive the real code paths (waiting for a queued
resource, failing fast, recreating after a preemption, requeueing before a time limit), and
the shell each TPU worker would run is run here, in a fake home, against a fake python.
"""

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_vm.sh"
SBATCH = ROOT / "launch" / "slurm_gpu.sbatch"
GCLOUD_TPUS = ["gcloud", "compute", "tpus"]
# What the user asked mmjax to do, with an argument holding a space and one holding a quote.
ARGS = ["train", "--config", "configs/smoke_clip.py", "--workdir", "gs://b/runs/x",
        "--data_dir", "gs://b/data", "--config.train.note=a b", "it's"]


def bash(*args, env=None, timeout=30):
    # Without the test session's JAX_PLATFORMS=cpu (conftest), which the sbatch would honour.
    full_env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "JAX_PLATFORMS")}
    full_env.update(env or {})
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=full_env, timeout=timeout)


def dry(*args, env=None):
    """The commands `tpu_vm.sh --dry-run ARGS` prints, each split back into its argv."""
    done = bash(TPU, "--dry-run", *args, env=env)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]


def flag(cmd, name):
    assert name in cmd, (name, cmd)
    return cmd[cmd.index(name) + 1]


def ssh_calls(cmds):
    """(node, --worker, remote command) of every `gcloud compute tpus tpu-vm ssh`."""
    return [(c[5], next(a for a in c if a.startswith("--worker=")).split("=", 1)[1],
             flag(c, "--command"))
            for c in cmds if c[:5] == GCLOUD_TPUS + ["tpu-vm", "ssh"]]


def started(cmds):
    return [(node, worker, script) for node, worker, script in ssh_calls(cmds)
            if "setsid nohup" in script]


def mmjax_args(script):
    """The arguments the worker script hands to `python -m mmjax.cli`."""
    words = shlex.split(script)
    start = words.index("mmjax-job") + 1
    return words[start:words.index(">", start)]


# ---- create / delete ---------------------------------------------------------------------

def test_create_one_v4_32_slice():
    cmds = dry("create", "pod", "--zone", "us-central2-b", "--accelerator", "v4-32")
    create, describe = cmds
    assert create[:6] == GCLOUD_TPUS + ["queued-resources", "create", "pod"]
    assert flag(create, "--zone") == "us-central2-b"
    assert flag(create, "--accelerator-type") == "v4-32"
    assert flag(create, "--runtime-version") == "tpu-ubuntu2204-base"
    assert flag(create, "--node-id") == "pod"
    assert not {"--node-count", "--node-prefix", "--spot", "--best-effort"} & set(create)
    assert describe[:6] == GCLOUD_TPUS + ["queued-resources", "describe", "pod"]
    assert "--format=value(state.state)" in describe
    spot = dry("create", "pod", "--zone", "us-central2-b", "--accelerator", "v4-32", "--spot")[0]
    assert spot == create + ["--spot"]
    best = dry("create", "pod", "--zone", "z", "--accelerator", "v4-32", "--best-effort")[0]
    assert best[:2] == ["gcloud", "alpha"] and "--best-effort" in best


def test_create_two_v5e_256_slices():
    create = dry("create", "pod", "--zone", "us-west4-a", "--accelerator", "v5e-256",
                 "--num-slices", "2", "--spot")[0]
    assert flag(create, "--accelerator-type") == "v5litepod-256"
    assert flag(create, "--runtime-version") == "v2-alpha-tpuv5-lite"
    assert flag(create, "--node-count") == "2" and flag(create, "--node-prefix") == "pod"
    assert "--node-id" not in create and "--spot" in create


def test_old_positional_form_still_works():
    assert (dry("create", "pod", "us-central2-b", "v4-32")
            == dry("create", "pod", "--zone", "us-central2-b", "--accelerator", "v4-32"))


def test_delete_targets_the_queued_resource_and_its_nodes():
    assert dry("delete", "pod", "--zone", "z", "--num-slices", "2") == [
        GCLOUD_TPUS + ["queued-resources", "delete", "pod", "--zone", "z", "--force", "--quiet"]]


# ---- install -----------------------------------------------------------------------------

@pytest.mark.parametrize("slices,nodes", [(1, ["pod"]), (2, ["pod-0", "pod-1"])])
def test_install_ships_head_to_every_worker_of_every_slice(slices, nodes):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout.strip()
    cmds = dry("install", "pod", "--zone", "z", "--num-slices", str(slices))
    archive = cmds[0]
    assert archive[:2] == ["git", "-C"] and "archive" in archive and archive[-1] == head
    tarball = flag(archive, "-o")
    scps = [c for c in cmds if c[:5] == GCLOUD_TPUS + ["tpu-vm", "scp"]]
    assert [(c[5], c[6], "--worker=all" in c) for c in scps] == [(tarball, f"{n}:", True)
                                                                   for n in nodes]
    installs = ssh_calls(cmds)
    assert [(n, w) for n, w, _ in installs] == [(n, "all") for n in nodes]
    for _, _, script in installs:
        assert head in script and script.endswith("bash launch/install.sh tpu")


# ---- run -----------------------------------------------------------------------------------

def test_run_on_one_slice():
    cmds = dry("run", "pod", "--zone", "us-central2-b", "--", *ARGS)
    (node, worker, script), = started(cmds)
    assert (node, worker) == ("pod", "all")
    assert mmjax_args(script) == ARGS
    assert "MEGASCALE" not in script
    # Stale TPU users go before the start.
    kill = script.index("sudo lsof -t /dev/accel* /dev/vfio/*")
    lock = script.index("sudo rm -f /tmp/libtpu_lockfile")
    assert kill < lock < script.index("setsid nohup")
    assert "xargs -r sudo kill -9" in script[kill:lock]
    calls = ssh_calls(cmds)
    tail = [c for c in calls if "tail" in c[2]]
    assert tail == [("pod", "0", "tail -n +1 -F ~/mmjax_run/slice0-worker0.log")]
    polls = [c for c in calls if "mmjax-status" in c[2]]
    assert [(n, w) for n, w, _ in polls] == [("pod", "all")]
    assert not [c for c in cmds if "queued-resources" in c]    # run alone creates nothing


def test_run_on_two_slices_sets_megascale():
    cmds = dry("run", "pod", "--zone", "us-west4-a", "--num-slices", "2", "--", *ARGS)
    ip_query = cmds[0]
    assert ip_query[:6] == GCLOUD_TPUS + ["tpu-vm", "describe", "pod-0"]
    assert "--format=value(networkEndpoints[0].ipAddress)" in ip_query
    starts = started(cmds)
    assert [(n, w) for n, w, _ in starts] == [("pod-0", "all"), ("pod-1", "all")]
    for slice_id, (_, _, script) in enumerate(starts):
        env = dict(w.split("=", 1) for w in shlex.split(script)
                   if w.startswith("MEGASCALE_"))
        assert env == {"MEGASCALE_COORDINATOR_ADDRESS": "COORDINATOR_IP",
                       "MEGASCALE_NUM_SLICES": "2", "MEGASCALE_PORT": "8081",
                       "MEGASCALE_SLICE_ID": str(slice_id)}
        assert mmjax_args(script) == ARGS
        assert script.index("/tmp/libtpu_lockfile") < script.index("setsid nohup")
    polls = [(n, w) for n, w, s in ssh_calls(cmds) if "mmjax-status" in s]
    assert polls == [("pod-0", "all"), ("pod-1", "all")]


def test_up_is_create_install_run_and_dry_run_env_is_the_flag():
    args = ["up", "pod", "--zone", "z", "--accelerator", "v4-32", "--", *ARGS]
    cmds = dry(*args)
    kinds = [c[3] if c[:3] == GCLOUD_TPUS else c[0] for c in cmds]
    assert kinds[:4] == ["queued-resources", "queued-resources", "git", "tpu-vm"]
    assert "create" in cmds[0] and started(cmds)
    done = bash(TPU, *args, env={"DRY_RUN": "1"})
    assert done.returncode == 0
    assert [shlex.split(x[2:]) for x in done.stdout.splitlines() if x.startswith("+ ")] == cmds


def test_stop_logs_status():
    stops = ssh_calls(dry("stop", "pod", "--zone", "z", "--num-slices", "2"))
    kills = [(n, w) for n, w, s in stops if "kill -TERM" in s]
    assert kills == [("pod-0", "all"), ("pod-1", "all")]
    assert ssh_calls(dry("logs", "pod", "--zone", "z", "--num-slices", "2", "--slice", "1",
                         "--worker", "5")) == [
        ("pod-1", "5", "tail -n +1 -F ~/mmjax_run/slice1-worker5.log")]
    status = dry("status", "pod", "--zone", "z")
    assert "describe" in status[0] and "mmjax-status" in ssh_calls(status)[0][2]


@pytest.mark.parametrize("args,code,message", [
    (["create", "pod", "--zone", "z"], 1, "needs --accelerator"),
    (["run", "pod", "--zone", "z"], 1, "nothing to run"),
    (["run", "pod", "--zone", "z", "--retries", "2", "--", "train"], 1, "give --accelerator"),
    (["run", "pod"], 2, "--zone is required"),
    (["launch", "pod", "--zone", "z"], 2, "invalid choice"),
    (["delete", "pod", "--zone", "z", "--", "train"], 2, "takes no mmjax command"),
    (["logs", "pod", "--zone", "z", "--slice", "1"], 1, "no such slice"),
])
def test_bad_usage_is_one_clear_line(args, code, message):
    done = bash(TPU, "--dry-run", *args)
    assert done.returncode == code and message in done.stderr, done.stderr


# ---- what each TPU worker runs, run here -----------------------------------------------------

def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def worker(tmp_path):
    """A fake TPU worker: a home with ~/mmjax and a venv whose python records its argv and
    environment, and curl (worker number 3) / sudo (records, runs nothing) on PATH."""
    home, bin_ = tmp_path / "home", tmp_path / "bin"
    (home / "mmjax").mkdir(parents=True)
    (home / "mmjax_venv" / "bin").mkdir(parents=True)
    bin_.mkdir()
    events = tmp_path / "events"
    executable(bin_ / "curl", "#!/bin/bash\necho 3\n")
    executable(bin_ / "sudo", f'#!/bin/bash\necho "sudo $*" >> {events}\n')
    executable(home / "mmjax_venv" / "bin" / "python", f"""#!/bin/bash
echo "python in $PWD task=$CLOUD_TPU_TASK_ID" >> {events}
printf '%s\\n' "$@" > {tmp_path}/argv
if [ -n "$FAKE_SLEEP" ]; then
  sleep 30 & s=$!
  trap 'kill $s; echo "python got TERM" >> {events}; exit 0' TERM
  wait $s
fi
exit ${{FAKE_RC:-0}}
""")
    env = {"HOME": str(home), "PATH": f"{bin_}:{os.environ['PATH']}"}

    def run(script, **extra):
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                              env=dict(os.environ, **env, **extra), timeout=20)

    def wait_for(path, seconds=10):
        deadline = time.time() + seconds
        while not path.exists():
            assert time.time() < deadline, f"{path} never appeared"
            time.sleep(0.02)
        time.sleep(0.05)
        return path.read_text()

    return run, wait_for, home / "mmjax_run", tmp_path, events


def test_worker_script_runs_mmjax_with_the_args_and_reports(worker):
    run, wait_for, run_dir, tmp, events = worker
    cmds = dry("run", "pod", "--zone", "z", "--", *ARGS)
    (_, _, start), = started(cmds)
    poll = next(s for _, _, s in ssh_calls(cmds) if "mmjax-status" in s)
    assert run(start, FAKE_RC="2").returncode == 0
    assert wait_for(run_dir / "exit_code").strip() == "2"
    assert (tmp / "argv").read_text().splitlines() == ["-m", "mmjax.cli", *ARGS]
    lines = events.read_text().splitlines()
    assert lines[0].startswith("sudo lsof -t") and lines[1] == "sudo rm -f /tmp/libtpu_lockfile"
    assert lines[2] == f"python in {run_dir.parent / 'mmjax'} task=3"
    assert (run_dir / "slice0-worker3.log").exists()
    assert run(poll).stdout.strip() == "mmjax-status slice=0 worker=3 exited 2"


def test_worker_stop_is_sigterm_and_the_run_exits_0(worker):
    run, wait_for, run_dir, tmp, events = worker
    cmds = dry("run", "pod", "--zone", "z", "--", *ARGS)
    (_, _, start), = started(cmds)
    poll = next(s for _, _, s in ssh_calls(cmds) if "mmjax-status" in s)
    stop = next(s for _, _, s in ssh_calls(dry("stop", "pod", "--zone", "z"))
                if "kill -TERM" in s)
    run(start, FAKE_SLEEP="1")
    wait_for(run_dir / "pid")
    wait_for(tmp / "argv")
    assert run(poll).stdout.strip() == "mmjax-status slice=0 worker=3 running"
    assert run(stop).returncode == 0
    assert wait_for(run_dir / "exit_code").strip() == "0"
    assert "python got TERM" in events.read_text()
    assert run(poll).stdout.strip() == "mmjax-status slice=0 worker=3 exited 0"


# ---- the real paths, against a fake gcloud -----------------------------------------------

FAKE_GCLOUD = """#!{python} -S
import fcntl, json, os, sys, time
d = os.environ["FAKE_GCLOUD_DIR"]
argv = sys.argv[1:]
line = " ".join(argv)
command = argv[argv.index("--command") + 1] if "--command" in argv else ""
kind = ("state" if "queued-resources describe" in line else
        "ip" if "tpu-vm describe" in line else
        "status" if "mmjax-status" in command else
        "tail" if command.startswith("tail") else "other")
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\\n")
counts_file = os.path.join(d, "counts.json")
with open(counts_file + ".lock", "w") as lock:  # the background tail and the polls run at once
    fcntl.flock(lock, fcntl.LOCK_EX)
    counts = json.load(open(counts_file)) if os.path.exists(counts_file) else {{}}
    n = counts[kind] = counts.get(kind, 0) + 1
    with open(counts_file, "w") as f:
        json.dump(counts, f)
replies = json.load(open(os.path.join(d, "scenario.json"))).get(kind, [{{}}])
reply = replies[min(n, len(replies)) - 1]
sys.stdout.write(reply.get("out", ""))
sys.stdout.flush()
time.sleep(reply.get("sleep", 0))
sys.exit(reply.get("rc", 0))
"""


@pytest.fixture
def gcloud(tmp_path):
    """Runs tpu_vm.sh (for real, --poll 0) against a fake gcloud that answers from a scenario
    ({kind: [replies in turn, the last repeated]}) and records every call."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    executable(bin_ / "gcloud", FAKE_GCLOUD.format(python=sys.executable))

    def launch(scenario, *args):
        (tmp_path / "scenario.json").write_text(json.dumps(scenario))
        for old in ("calls.jsonl", "counts.json"):
            (tmp_path / old).unlink(missing_ok=True)
        env = {"PATH": f"{bin_}:{os.environ['PATH']}", "FAKE_GCLOUD_DIR": str(tmp_path),
               "TMPDIR": str(tmp_path)}
        start = time.time()
        done = bash(TPU, *args[:2], "--poll", "0", *args[2:], env=env)
        calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
        return done, calls, time.time() - start

    return launch


def status_reply(*states):
    return {"out": "".join(f"mmjax-status slice=0 worker={w} {s}\n" for w, s in enumerate(states))}


def test_create_waits_until_the_queued_resource_is_active(gcloud):
    done, calls, _ = gcloud({"state": [{"out": "WAITING_FOR_RESOURCES\n"},
                                       {"out": "PROVISIONING\n"}, {"out": "ACTIVE\n"}]},
                            "create", "pod", "--zone", "z", "--accelerator", "v4-32")
    assert done.returncode == 0, done.stderr
    assert [c[3] for c in calls] == ["create", "describe", "describe", "describe"]
    done, calls, _ = gcloud({"state": [{"out": "FAILED\n"}]},
                            "create", "pod2", "--zone", "z", "--accelerator", "v4-32")
    assert done.returncode == 1 and "FAILED" in done.stderr


def test_run_streams_worker_0_and_returns_when_all_exit_0(gcloud):
    done, calls, seconds = gcloud(
        {"tail": [{"out": "step 1\n", "sleep": 20}],
         "status": [status_reply("running", "running"), status_reply("exited 0", "exited 0")],
         "state": [{"out": "ACTIVE\n"}]},
        "run", "pod", "--zone", "z", "--", *ARGS)
    assert done.returncode == 0, done.stderr
    assert "step 1" in done.stdout and "all 2 workers exited 0" in done.stderr
    assert seconds < 8          # the 20 s `tail -F` was stopped, not waited for


def test_run_fails_fast_when_a_worker_fails(gcloud):
    done, calls, _ = gcloud({"status": [status_reply("running", "exited 2")],
                             "state": [{"out": "ACTIVE\n"}]},
                            "run", "pod", "--zone", "z", "--", *ARGS)
    assert done.returncode == 1
    assert "slice 0 worker 1 exited 2" in done.stderr
    assert "--worker 1" in done.stderr                       # names the log to read
    assert "kill -TERM" in calls[-1][-1]                     # the others are stopped


def test_run_recreates_a_preempted_slice_and_reruns(gcloud):
    args = ["run", "pod", "--zone", "z", "--accelerator", "v4-32", "--spot", "--retries", "1",
            "--", *ARGS]
    scenario = {"status": [{"rc": 255}, status_reply("exited 0")],
                "state": [{"out": "SUSPENDED\n"}, {"out": "ACTIVE\n"}]}
    done, calls, _ = gcloud(scenario, *args)
    assert done.returncode == 0, done.stderr
    steps = [c[3] if c[2] == "queued-resources" else c[3] if c[3] == "scp" else
             "start" if "setsid nohup" in c[-1] else "install" if "install.sh" in c[-1] else c
             for c in calls if not c[-1].startswith("tail") and "mmjax-status" not in c[-1]]
    assert steps == ["start", "describe", "delete", "create", "describe", "scp", "install", "start",
                     "describe"]                  # the last: still ACTIVE once all exited 0
    create = next(c for c in calls if c[3] == "create")
    assert "--spot" in create and flag(create, "--node-id") == "pod"
    reruns = [mmjax_args(c[-1]) for c in calls if "setsid nohup" in c[-1]]
    assert reruns == [ARGS, ARGS]
    # Without retries left it stops there, saying why.
    done, _, _ = gcloud(scenario, *[a if a != "1" else "0" for a in args])
    assert done.returncode == 1 and "no retries left" in done.stderr


# ---- SLURM ---------------------------------------------------------------------------------

def sbatch_directives():
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, x in enumerate(lines) if x.strip() and not x.startswith("#"))
    directives = [x.split(None, 1)[1] for x in lines if x.startswith("#SBATCH")]
    # sbatch reads no #SBATCH line after the first command.
    assert all(i < first_command for i, x in enumerate(lines) if x.startswith("#SBATCH"))
    return directives


def test_sbatch_asks_one_task_per_gpu_a_signal_and_requeue():
    d = sbatch_directives()
    assert {"--ntasks-per-node=8", "--gpus-per-node=8", "--requeue",
            "--signal=B:USR1@120"} <= set(d)


def test_sbatch_dry_run_prints_srun_and_env():
    done = bash(SBATCH, *ARGS, env={"DRY_RUN": "1"})
    assert done.returncode == 0, done.stderr
    cmds = [shlex.split(x[2:]) for x in done.stdout.splitlines() if x.startswith("+ ")]
    assert ["export", "JAX_PLATFORMS=cuda"] in cmds
    srun = next(c for c in cmds if c[0] == "srun")
    assert srun == ["srun", "--kill-on-bad-exit=1", "python", "-m", "mmjax.cli", *ARGS]
    assert bash(SBATCH, *ARGS).returncode == 2          # not dry, not in a job: refuses


@pytest.fixture
def slurm(tmp_path):
    """srun (records its argv, then sleeps until SIGTERM or exits FAKE_RC), scancel (sends
    SIGTERM to that srun), scontrol (records) on PATH."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls"
    executable(bin_ / "srun", f"""#!/bin/bash
echo "srun $*" >> {calls}
echo $$ > {tmp_path}/srun.pid
[ -z "$FAKE_RC" ] || exit "$FAKE_RC"
sleep 30 & s=$!
trap 'kill $s; echo "srun got TERM" >> {calls}; exit 0' TERM
wait $s
""")
    executable(bin_ / "scancel", f'#!/bin/bash\necho "scancel $*" >> {calls}\n'
                                 f'kill -TERM "$(cat {tmp_path}/srun.pid)"\n')
    executable(bin_ / "scontrol", f'#!/bin/bash\necho "scontrol $*" >> {calls}\n')
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_JOB_ID="77",
               SLURM_JOB_NODELIST="gpu[01-04]")
    env.pop("DRY_RUN", None)
    return env, calls, tmp_path / "srun.pid"


def test_sbatch_checkpoints_and_requeues_on_the_time_limit_signal(slurm):
    env, calls, srun_pid = slurm
    job = subprocess.Popen(["bash", str(SBATCH), *ARGS], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while not srun_pid.exists():
        assert time.time() < deadline and job.poll() is None, job.communicate()
        time.sleep(0.02)
    time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)                 # what --signal=B:USR1@120 sends
    out, err = job.communicate(timeout=10)
    assert job.returncode == 0, err
    lines = calls.read_text().splitlines()
    assert lines[-4:] == ["srun --kill-on-bad-exit=1 python -m mmjax.cli " + " ".join(ARGS),
                          "scancel --signal=TERM 77", "srun got TERM", "scontrol requeue 77"]


def test_sbatch_without_the_signal_passes_the_exit_status_and_does_not_requeue(slurm):
    env, calls, _ = slurm
    done = subprocess.run(["bash", str(SBATCH), *ARGS], env=dict(env, FAKE_RC="3"), cwd=ROOT,
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 3
    assert "requeue" not in calls.read_text() and "scancel" not in calls.read_text()


# ---- syntax --------------------------------------------------------------------------------

@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "launch").iterdir()
                                          if p.suffix in (".sh", ".sbatch")))
def test_launch_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(ROOT / "launch" / script)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
