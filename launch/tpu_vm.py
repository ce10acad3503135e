#!/usr/bin/env python3
"""Cloud TPU VMs: create a slice (or several) as a queued resource, install mmjax on every
worker, run the same `python -m mmjax.cli ...` on all of them, follow it, stop it, delete it.
`launch/tpu_vm.sh` runs this file; it needs only Python 3.8+ and, to act, the gcloud CLI.

  launch/tpu_vm.sh create  NAME --zone ZONE --accelerator v4-32 [--spot | --best-effort] [--num-slices N]
  launch/tpu_vm.sh install NAME --zone ZONE [--num-slices N]
  launch/tpu_vm.sh run     NAME --zone ZONE [--num-slices N] [--retries N] -- train --config ... \\
                           --workdir gs://BUCKET/runs/NAME --data_dir gs://BUCKET/data
  launch/tpu_vm.sh up      NAME --zone ZONE --accelerator v4-32 [...] -- train ...   # create + install + run
  launch/tpu_vm.sh logs    NAME --zone ZONE [--slice S] [--worker W]   # follow one worker's log
  launch/tpu_vm.sh status  NAME --zone ZONE [--num-slices N]           # queued resource + each worker
  launch/tpu_vm.sh stop    NAME --zone ZONE [--num-slices N]           # SIGTERM: mmjax saves, exits 0
  launch/tpu_vm.sh delete  NAME --zone ZONE                            # the queued resource and its nodes
  launch/tpu_vm.sh --dry-run VERB ...   (or DRY_RUN=1): print each command after "+ ", run none

NAME is the queued resource's id and its node's; with --num-slices N > 1 the nodes are
NAME-0 .. NAME-(N-1) (gcloud's --node-prefix), slice i is node NAME-i. Give the same
--num-slices to every verb. The older positional form `create NAME ZONE ACCELERATOR [VERSION]`,
`install|run|delete NAME ZONE` still works.

On the workers: the code is ~/mmjax (the local HEAD commit, shipped as a `git archive`
tarball: workers need no access to the repository and get exactly that commit; uncommitted
changes are not shipped), a venv ~/mmjax_venv, and per run ~/mmjax_run/ holding the pid, the
exit_code and the worker's log sliceS-workerW.log (the previous run's as .prev).

A dry run still reads the local git commit (`install`), prints every other command, and
stands in for what queries would answer: the queued resource is ACTIVE, the coordinator's
address is COORDINATOR_IP.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_VERSIONS = {  # Cloud TPU "TPU software versions" for JAX, by TPU generation.
    "v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v2": "tpu-ubuntu2204-base"}
ACCELERATOR_ALIASES = {"v5e": "v5litepod"}     # gcloud names v5e slices v5litepod-N
MEGASCALE_PORT = "8081"                         # the port Ray's TPU support uses too
WAITING_STATES = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING", "")
DEAD_STATES = ("FAILED", "SUSPENDING", "SUSPENDED", "DELETING", "NOT_FOUND")
REMOTE_CODE, REMOTE_VENV, REMOTE_RUN = "~/mmjax", "~/mmjax_venv", "~/mmjax_run"
WORKER_NUMBER = ("$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/"
                 "computeMetadata/v1/instance/attributes/agent-worker-number)")
STATUS_LINE = re.compile(r"mmjax-status slice=(\d+) worker=(\d+) (running|lost|exited (\d+))")


class LaunchError(Exception):
    """A failure to report in one line (exit status 1)."""


class Preempted(Exception):
    """The slice went away (or a worker lost its process): rerun, after recreating if asked."""

    def __init__(self, message, recreate):
        super().__init__(message)
        self.recreate = recreate


def log(message):
    print(f"tpu_vm: {message}", file=sys.stderr, flush=True)


class TpuVm:
    def __init__(self, opts):
        self.dry_run = opts.dry_run
        self.name, self.zone, self.project = opts.name, opts.zone, opts.project
        self.num_slices = opts.num_slices
        self.accelerator, self.version = opts.accelerator, opts.version
        self.spot, self.best_effort = opts.spot, opts.best_effort
        self.retries, self.poll = opts.retries, opts.poll
        self.slice, self.worker = opts.slice, opts.worker
        if self.num_slices < 1:
            raise LaunchError("--num-slices must be at least 1")
        self.nodes = ([self.name] if self.num_slices == 1
                      else [f"{self.name}-{i}" for i in range(self.num_slices)])

    # ---- running commands: the one place that prints or executes -------------------------

    def run_cmd(self, argv, capture=False, check=True, quiet=False, dry_output=""):
        """Prints `+ argv` (always in a dry run; to stderr otherwise unless quiet), then runs
        it unless a dry run. capture: returns (status, stdout); else returns the status."""
        line = "+ " + " ".join(shlex.quote(a) for a in argv)
        if self.dry_run:
            print(line, flush=True)
            return (0, dry_output) if capture else 0
        if not quiet:
            print(line, file=sys.stderr, flush=True)
        try:
            if capture:
                done = subprocess.run(argv, stdout=subprocess.PIPE, universal_newlines=True)
                status, out = done.returncode, done.stdout
            else:
                status, out = subprocess.call(argv), None
        except FileNotFoundError as e:
            raise LaunchError(f"{argv[0]} not found ({e.strerror}): install it or use --dry-run")
        if check and status:
            raise LaunchError(f"command failed (exit {status}): {line[2:]}")
        return (status, out) if capture else status

    def start_cmd(self, argv):
        """Like run_cmd, in the background: a Popen (None in a dry run)."""
        line = "+ " + " ".join(shlex.quote(a) for a in argv)
        print(line, file=sys.stdout if self.dry_run else sys.stderr, flush=True)
        # Its own process group, so that stopping it also stops the ssh that gcloud starts.
        return None if self.dry_run else subprocess.Popen(argv, start_new_session=True)

    def note(self, message):
        """A dry run's `#` line: what a real run would do at this point."""
        if self.dry_run:
            print(f"# {message}", flush=True)

    # ---- gcloud command lines ----------------------------------------------------------

    def gcloud(self, *words, track=()):
        cmd = ["gcloud", *track, "compute", "tpus", *words, "--zone", self.zone]
        return cmd + (["--project", self.project] if self.project else [])

    def ssh(self, node, command, worker="all"):
        return self.gcloud("tpu-vm", "ssh", node, f"--worker={worker}") + ["--command", command]

    # ---- queued resource ---------------------------------------------------------------

    def create(self):
        if not self.accelerator:
            raise LaunchError("create needs --accelerator, e.g. v4-32 or v5e-256")
        accelerator = accelerator_type(self.accelerator)
        version = self.version or runtime_version(accelerator)
        track = ("alpha",) if self.best_effort else ()     # --best-effort is alpha-only
        cmd = self.gcloud("queued-resources", "create", self.name, track=track)
        cmd += ["--accelerator-type", accelerator, "--runtime-version", version]
        if self.num_slices == 1:
            cmd += ["--node-id", self.name]
        else:
            cmd += ["--node-count", str(self.num_slices), "--node-prefix", self.name]
        cmd += ["--spot"] if self.spot else []
        cmd += ["--best-effort"] if self.best_effort else []
        self.run_cmd(cmd)
        self.wait_active()

    def state(self, quiet=False):
        cmd = self.gcloud("queued-resources", "describe", self.name) + ["--format=value(state.state)"]
        status, out = self.run_cmd(cmd, capture=True, check=False, quiet=quiet, dry_output="ACTIVE")
        return out.strip() if status == 0 else "NOT_FOUND"

    def wait_active(self):
        self.note(f"repeated every {self.poll:g} s until the state is ACTIVE")
        last = None
        while True:
            state = self.state(quiet=last is not None)
            if state != last and not self.dry_run:
                log(f"queued resource {self.name}: {state or 'no state yet'}")
                last = state
            if state == "ACTIVE":
                return
            if state in DEAD_STATES:
                raise Preempted(f"queued resource {self.name} is {state} (`gcloud compute tpus "
                                f"queued-resources describe {self.name}` says why)", recreate=True)
            time.sleep(self.poll)

    def delete(self):
        self.run_cmd(self.gcloud("queued-resources", "delete", self.name) + ["--force", "--quiet"])

    # ---- code on the workers -----------------------------------------------------------

    def install(self):
        commit = git("rev-parse", "HEAD")
        if git("status", "--porcelain", "--untracked-files=no"):
            log(f"uncommitted changes are not shipped: the workers get commit {commit[:12]}")
        tarball = f"mmjax-{commit[:12]}.tar.gz"
        local = os.path.join(tempfile.gettempdir(), tarball)
        self.run_cmd(["git", "-C", ROOT, "archive", "--format=tar.gz", "-o", local, commit])
        script = "; ".join([
            "set -e",
            f"rm -rf {REMOTE_CODE}", f"mkdir -p {REMOTE_CODE}",
            f"tar -xzf ~/{tarball} -C {REMOTE_CODE}", f"rm -f ~/{tarball}",
            f"echo {commit} > {REMOTE_CODE}/COMMIT",
            # A venv gives `python` (the image has only python3) and keeps pip off the system.
            f"[ -x {REMOTE_VENV}/bin/pip ] || python3 -m venv {REMOTE_VENV} || "
            f"{{ sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv && "
            f"python3 -m venv {REMOTE_VENV}; }}",
            f". {REMOTE_VENV}/bin/activate",
            f"cd {REMOTE_CODE}", "bash launch/install.sh tpu"])
        for node in self.nodes:
            self.run_cmd(self.gcloud("tpu-vm", "scp", local, f"{node}:", "--worker=all"))
            self.run_cmd(self.ssh(node, script))

    # ---- the run -----------------------------------------------------------------------

    def log_file(self, slice_id, worker="$W"):
        return f"{REMOTE_RUN}/slice{slice_id}-worker{worker}.log"

    def start(self, args):
        """Starts `python -m mmjax.cli ARGS` on every worker of every slice, detached."""
        env = {}
        if self.num_slices > 1:
            ip_cmd = self.gcloud("tpu-vm", "describe", self.nodes[0]) + [
                "--format=value(networkEndpoints[0].ipAddress)"]
            _, ip = self.run_cmd(ip_cmd, capture=True, dry_output="COORDINATOR_IP")
            self.note("COORDINATOR_IP: the address the command above prints")
            if not ip.strip():
                raise LaunchError(f"no internal IP for {self.nodes[0]}'s worker 0")
            env = {"MEGASCALE_COORDINATOR_ADDRESS": ip.strip(), "MEGASCALE_PORT": MEGASCALE_PORT,
                   "MEGASCALE_NUM_SLICES": str(self.num_slices)}
        # The job: mmjax with the user's arguments ("$@", quoted once, below), its pid and exit
        # status in files that `status`, `stop` and the polls read.
        job = (f"cd {REMOTE_CODE} || {{ echo 1 > {REMOTE_RUN}/exit_code; exit 1; }}; "
               f"{REMOTE_VENV}/bin/python -m mmjax.cli \"$@\" & p=$!; echo $p > {REMOTE_RUN}/pid; "
               f"wait $p; echo $? > {REMOTE_RUN}/exit_code")
        quoted_args = " ".join(shlex.quote(a) for a in args)
        for slice_id, node in enumerate(self.nodes):
            slice_env = dict(env, MEGASCALE_SLICE_ID=str(slice_id)) if env else {}
            # mmjax calls jax.distributed.initialize() when it sees CLOUD_TPU_TASK_ID (this
            # worker's number, which a gcloud ssh session does not set); jax then reads the rest
            # (workers, and the MEGASCALE_* for several slices) itself.
            exports = " ".join(["CLOUD_TPU_TASK_ID=$W", "PYTHONUNBUFFERED=1"] + [
                f"{k}={shlex.quote(v)}" for k, v in sorted(slice_env.items())])
            logf = self.log_file(slice_id)
            script = "; ".join([
                "set -e", f"W={WORKER_NUMBER}", f"mkdir -p {REMOTE_RUN}",
                # A stale process (an earlier run, a crashed job) keeps the TPU: kill it first.
                "{ sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null || true; } "
                "| sort -u | xargs -r sudo kill -9 || true",
                "sudo rm -f /tmp/libtpu_lockfile",
                f"rm -f {REMOTE_RUN}/pid {REMOTE_RUN}/exit_code",
                f"[ ! -f {logf} ] || mv -f {logf} {logf}.prev",
                f"{exports} setsid nohup bash -c {shlex.quote(job)} mmjax-job {quoted_args} "
                f"> {logf} 2>&1 < /dev/null &"])
            # `&` ends the list: the ssh session returns while the job runs on.
            status = self.run_cmd(self.ssh(node, script), check=False)
            if status:
                if self.state(quiet=True) != "ACTIVE":
                    raise Preempted(f"starting on {node} failed; the slice is gone", recreate=True)
                raise LaunchError(f"starting the run on {node} failed (exit {status})")

    def status_lines(self, quiet=True):
        """[(slice, worker, state, exit code or None)], or None when a slice did not answer."""
        found = []
        for slice_id, node in enumerate(self.nodes):
            script = "; ".join([
                f"W={WORKER_NUMBER}", f"R={REMOTE_RUN}", f'S="mmjax-status slice={slice_id} worker=$W"',
                'if [ -f $R/exit_code ]; then echo "$S exited $(cat $R/exit_code)"; '
                'elif [ -f $R/pid ] && kill -0 "$(cat $R/pid)" 2>/dev/null; then echo "$S running"; '
                'else echo "$S lost"; fi'])
            status, out = self.run_cmd(self.ssh(node, script), capture=True, check=False, quiet=quiet)
            lines = [m.groups() for m in STATUS_LINE.finditer(out or "")]
            if status and not self.dry_run:
                return None
            found += [(int(s), int(w), state.split()[0], None if rc is None else int(rc))
                      for s, w, state, rc in lines]
        return found

    def signal_workers(self, quiet=False):
        script = (f"[ ! -f {REMOTE_RUN}/pid ] || kill -TERM \"$(cat {REMOTE_RUN}/pid)\" "
                  f"2>/dev/null || true")
        for node in self.nodes:
            self.run_cmd(self.ssh(node, script), check=False, quiet=quiet)

    def watch(self):
        """Streams slice 0 worker 0's log and polls every worker until all exit. Returns 0
        when all exited 0; raises LaunchError on a non-zero exit, Preempted on a lost slice."""
        tail = self.start_cmd(self.ssh(self.nodes[0], f"tail -n +1 -F {self.log_file(0, 0)}",
                                       worker="0"))
        try:
            self.note(f"then every {self.poll:g} s, on each slice, until every worker has exited:")
            unanswered = 0
            while True:
                if not self.dry_run:
                    time.sleep(self.poll)
                statuses = self.status_lines(quiet=not self.dry_run)
                if self.dry_run:
                    return 0
                if statuses is None or not statuses:
                    unanswered += 1
                    self.check_slice(f"a slice did not answer ({unanswered} time(s) in a row)",
                                     give_up=unanswered >= 3)
                    continue
                unanswered = 0
                failed = [s for s in statuses if s[2] == "exited" and s[3] != 0]
                lost = [s for s in statuses if s[2] == "lost"]
                if failed or lost:
                    what = ", ".join(f"slice {s} worker {w} " + (f"exited {rc}" if rc is not None
                                                                 else "lost its process")
                                     for s, w, _, rc in failed + lost)
                    self.check_slice(what, give_up=False)   # raises Preempted unless ACTIVE
                    if lost and not failed:
                        raise Preempted(what, recreate=False)
                    log(f"{what}: stopping the other workers")
                    self.signal_workers(quiet=True)
                    raise LaunchError(f"{what}; its log: launch/tpu_vm.sh logs {self.name} "
                                      f"--zone {self.zone} --slice {failed[0][0]} "
                                      f"--worker {failed[0][1]}")
                if all(s[2] == "exited" for s in statuses):
                    # A slice being preempted may SIGTERM mmjax (which saves and exits 0) first.
                    self.check_slice(f"all {len(statuses)} workers exited 0", give_up=False)
                    return 0
        finally:
            if tail is not None:
                try:
                    os.killpg(tail.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                tail.wait()

    def check_slice(self, what, give_up):
        state = self.state(quiet=True)
        if state != "ACTIVE":
            raise Preempted(f"{what}; queued resource {self.name} is {state or 'gone'}",
                            recreate=True)
        if give_up:
            raise Preempted(f"{what}; the queued resource is ACTIVE", recreate=False)
        log(f"{what}; the queued resource is ACTIVE")

    def run(self, args, create_first=False):
        if not args:
            raise LaunchError("nothing to run: put the mmjax command after --, e.g. "
                              "-- train --config configs/smoke_clip.py --workdir gs://BUCKET/runs/x")
        warn_local_paths(args)
        if self.retries and not self.accelerator:
            raise LaunchError("--retries recreates a preempted slice: give --accelerator too "
                              "(and --spot / --best-effort / --version as when created)")
        attempt, recreate = 0, create_first
        while True:
            try:
                if recreate:
                    if attempt:
                        self.delete()
                    self.create()
                    self.install()
                self.start(args)
                return self.watch()
            except Preempted as e:
                if attempt >= self.retries:
                    raise LaunchError(f"{e}; no retries left (--retries {self.retries})")
                attempt += 1
                recreate = e.recreate
                log(f"{e}: {'recreating the slice and ' if recreate else ''}rerunning "
                    f"(retry {attempt}/{self.retries}); mmjax resumes from its last checkpoint")

    def stop(self):
        self.signal_workers()
        self.note("then every poll, until no worker runs: the status command above")
        deadline = time.time() + 900
        while True:
            statuses = self.status_lines(quiet=not self.dry_run)
            if self.dry_run:
                return 0
            running = [s for s in (statuses or []) if s[2] == "running"]
            if statuses is not None and not running:
                for s, w, state, rc in statuses:
                    log(f"slice {s} worker {w}: {state}" + ("" if rc is None else f" {rc}"))
                return 0
            if time.time() > deadline:
                raise LaunchError(f"{len(running)} workers still run 15 min after SIGTERM")
            time.sleep(min(self.poll, 10))

    def status(self):
        log(f"queued resource {self.name}: {self.state() or 'no state yet'}")
        statuses = self.status_lines(quiet=False)
        if statuses is None:
            raise LaunchError("a slice did not answer")
        for s, w, state, rc in statuses:
            print(f"slice {s} worker {w}: {state}" + ("" if rc is None else f" {rc}"))
        return 0

    def logs(self):
        if self.slice >= len(self.nodes):
            raise LaunchError(f"--slice {self.slice}: no such slice (--num-slices {self.num_slices})")
        node = self.nodes[self.slice]
        cmd = self.ssh(node, f"tail -n +1 -F {self.log_file(self.slice, self.worker)}",
                       worker=str(self.worker))
        return self.run_cmd(cmd, check=False)


def accelerator_type(name):
    generation, _, size = name.partition("-")
    return f"{ACCELERATOR_ALIASES.get(generation, generation)}-{size}" if size else name


def runtime_version(accelerator):
    generation = accelerator.split("-")[0]
    if generation not in RUNTIME_VERSIONS:
        raise LaunchError(f"no default runtime version for {accelerator}: pass --version")
    return RUNTIME_VERSIONS[generation]


def git(*args):
    try:
        return subprocess.run(["git", "-C", ROOT, *args], stdout=subprocess.PIPE, check=True,
                              universal_newlines=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise LaunchError(f"git {' '.join(args)} failed in {ROOT}: {e}")


def warn_local_paths(args):
    """Each worker would write (or read) its own disk: say so."""
    if args[0] == "train" and not any(a == "--workdir" or a.startswith("--workdir=") for a in args):
        log("no --workdir: each worker would write runs/<config> on its own disk; "
            "use --workdir gs://BUCKET/runs/NAME")
    for flag in ("--workdir", "--data_dir"):
        for i, a in enumerate(args):
            value = a.split("=", 1)[1] if a.startswith(flag + "=") else (
                args[i + 1] if a == flag and i + 1 < len(args) else None)
            if value is not None and not value.startswith("gs://"):
                log(f"{flag} {value} is on each worker's own disk; every worker needs the same "
                    f"files: use a gs:// path")


def parse(argv):
    if "--" in argv:
        cut = argv.index("--")
        argv, mmjax_args = argv[:cut], argv[cut + 1:]
    else:
        mmjax_args = []
    p = argparse.ArgumentParser(prog="launch/tpu_vm.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("verb", choices=("create", "install", "run", "up", "logs", "status", "stop",
                                    "delete"))
    p.add_argument("name", help="queued resource id, also the node name (prefix)")
    p.add_argument("legacy", nargs="*", metavar="ZONE [ACCELERATOR [VERSION]]",
                   help="the older positional form")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "0") not in ("", "0"),
                   help="print the commands, run none (also: env DRY_RUN=1)")
    p.add_argument("--zone", help="e.g. us-central2-b (v4), us-west4-a (v5e)")
    p.add_argument("--project", help="default: gcloud's configured project")
    p.add_argument("--accelerator", help="create/up: v4-32, v5e-256 (= v5litepod-256), v5p-64, ...")
    p.add_argument("--version", help="runtime version (default: Cloud TPU's for JAX on that generation)")
    p.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN (multislice)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="Spot VMs: cheaper, preemptible")
    kind.add_argument("--best-effort", action="store_true", help="best-effort tier (gcloud alpha)")
    p.add_argument("--retries", type=int, default=0,
                   help="run/up: after a preemption, recreate the slice and rerun up to N times")
    p.add_argument("--poll", type=float, default=60.0, help="seconds between status checks")
    p.add_argument("--slice", type=int, default=0, help="logs: which slice")
    p.add_argument("--worker", type=int, default=0, help="logs: which worker of the slice")
    opts = p.parse_args(argv)
    legacy = list(opts.legacy)
    if legacy and not opts.zone:
        opts.zone = legacy.pop(0)
    if legacy and opts.verb in ("create", "up") and not opts.accelerator:
        opts.accelerator = legacy.pop(0)
    if legacy and opts.verb in ("create", "up") and not opts.version:
        opts.version = legacy.pop(0)
    if legacy:
        p.error(f"unexpected arguments: {' '.join(legacy)}")
    if not opts.zone:
        p.error("--zone is required")
    if mmjax_args and opts.verb not in ("run", "up"):
        p.error(f"{opts.verb} takes no mmjax command after --")
    return opts, mmjax_args


def main(argv=None):
    opts, mmjax_args = parse(sys.argv[1:] if argv is None else argv)
    try:
        tpu = TpuVm(opts)
        if opts.verb == "create":
            tpu.create()
        elif opts.verb == "install":
            tpu.install()
        elif opts.verb == "run":
            return tpu.run(mmjax_args)
        elif opts.verb == "up":
            return tpu.run(mmjax_args, create_first=True)
        elif opts.verb == "logs":
            return tpu.logs()
        elif opts.verb == "status":
            return tpu.status()
        elif opts.verb == "stop":
            return tpu.stop()
        elif opts.verb == "delete":
            tpu.delete()
        return 0
    except Preempted as e:
        log(f"error: {e}")
        return 1
    except LaunchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        if opts.verb in ("run", "up"):
            log(f"interrupted: the run goes on on the workers; `launch/tpu_vm.sh logs {opts.name} "
                f"--zone {opts.zone}` follows it, `stop` stops it")
        return 130


if __name__ == "__main__":
    sys.exit(main())
