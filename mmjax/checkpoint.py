"""Orbax checkpoints of a run: async saves, keep-N, exact resume, fallback past corrupt steps
(unreadable ones, and ones whose arrays do not match the checksums saved with them: see
mmjax/checksums.py), preemption. `mmjax verify` is mmjax/checkpoint_verify.py."""

import json
import logging
import signal
import threading
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mmjax import checksums as checksum_lib
from mmjax import paths
from mmjax.errors import CheckpointError, CheckpointMismatchError

log = logging.getLogger(__name__)

# Keys of the config that make a checkpoint what it is: they must match to resume from it.
# Everything else (train.steps, mesh, optimiser settings, ...) may change between runs.
MATCH_KEYS = ("task", "seed", "model", "data", "optim.name")
# ... except these, which change how the model computes or the input is read, not what.
COMPUTE_KEYS = ("model.dtype", "model.remat", "model.attention", "model.prune_last_layer",
                "data.worker_count", "data.max_bad_fraction")
# The items of a step (each a folder of WORKDIR/checkpoints/<step>).
ITEMS = ("state", "data", "config", "checksums")


class Restored(NamedTuple):
    step: int
    state: Any            # the TrainState; with `params_only`, a dict holding just "params"
    data_state: bytes | None  # this process's grain iterator state (None with `params_only`)
    changes: list         # "key: a (checkpoint) vs b (config)" of the keys that changed
    params_only: bool = False


def _flatten(tree, prefix=""):
    """{'a.b': leaf} of a nested dict (lists stay leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items()
            for k, v in _flatten(sub, f"{prefix}.{key}" if prefix else key).items()}


def config_differences(saved, current):
    """(must_match, free): 'key: a (checkpoint) vs b (config)' lines of the keys that differ."""
    a, b = _flatten(saved), _flatten(current)
    # A key the checkpoint's mmjax did not have yet, at its default now, changes nothing.
    from mmjax.config import defaults
    default = _flatten(json.loads(defaults().to_json()))
    under = lambda key, names: any(key == n or key.startswith(n + ".") for n in names)
    must, free = [], []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        if key not in a and key in default and y == default[key]:
            continue
        if x != y:
            line = f"{key}: {x!r} (checkpoint) vs {y!r} (config)"
            (must if under(key, MATCH_KEYS) and not under(key, COMPUTE_KEYS) else free).append(line)
    return must, free


def data_state_for(saved, process_index, process_count):
    """This process's data position out of the saved positions of every process.

    The input pipeline's position is global (global batches read), the same on every
    process, so a job resumes on any process count that divides the batch. A streamed
    dataset's position is per process and resumes only on the same count.
    """
    states = saved["iterators"]
    if len(states) == process_count:
        return states[process_index].encode()
    parsed = [json.loads(s) for s in states]
    if all("batches_read" in s for s in parsed):
        return states[0].encode()
    raise CheckpointError(f"the checkpoint's data position was written by {len(states)} processes "
                          f"reading a streamed dataset (or by an older mmjax); it resumes only on "
                          f"{len(states)} processes (this job has {process_count})")


def _gather_text(text: str) -> list:
    """`text` of every process, in process order (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return [text]
    data = np.frombuffer(text.encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.int32(data.size))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [bytes(row[:size]).decode() for row, size in zip(rows, sizes)]


def _all_agree(ok: bool) -> bool:
    """True when `ok` on every process."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.process_allgather(np.int32(ok)).all())


def _sync(name):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def first_line(error):
    """'Type: first line of the message' (TensorStore's go on for pages)."""
    text = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
    return f"{type(error).__name__}: {text}"[:300]


class Checkpointer:
    """Saves `state` (sharded pytree), `data` (every process's grain iterator state),
    `config` (JSON) and their `checksums` under WORKDIR/checkpoints/<step>; keeps the newest
    `keep` and every `keep_period`-th step for good; restores newest-first onto any mesh.

    Orbax writes each step into a temporary directory and renames it when every item is
    committed, so a step killed mid-save never shows up as a step; old steps are deleted
    only after a newer one has committed. `read_only` (evaluation next to a running job)
    neither writes, deletes, nor moves anything.
    """

    def __init__(self, directory, config, *, keep=3, keep_period=0, async_save=True,
                 read_only=False):
        self.directory = paths.resolve(directory)  # local: made absolute (orbax needs it); gs://: as is
        self.config_json = json.loads(config.to_json())
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, keep_period=keep_period or None,
            enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def save(self, step, state, data_state: bytes):
        """Starts saving `step` and returns once the arrays are copied off the devices; the
        write goes on in the background. Every process calls it (its data state is gathered,
        the arrays' checksums are computed on the devices)."""
        iterators = _gather_text(data_state.decode())
        data = {"process_count": len(iterators), "iterators": iterators}
        checksums = checksum_lib.make(state, {"data": data, "config": self.config_json})
        return self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
            config=ocp.args.JsonSave(self.config_json), checksums=ocp.args.JsonSave(checksums)))

    def all_steps(self):
        return list(self.manager.all_steps())

    def restore(self, abstract_state, *, params_only=False, weights_only=False):
        """The newest usable checkpoint as `Restored`, or None when there is none.

        `abstract_state` holds ShapeDtypeStructs with the target shardings, so a checkpoint
        written on one mesh is laid out on whatever mesh this run has. A step that does not
        restore, or whose arrays or JSON items differ from the checksums saved with it (the
        processes agree on the verdict), is reported in one line and, once an older one
        restores, moved to checkpoints/corrupt/ (kept for inspection, out of the way of this
        run's saves). If none restores, CheckpointError names each failure and nothing is moved.

        A checkpoint of another model config (MATCH_KEYS) raises CheckpointMismatchError,
        unless `weights_only`: then only its params are taken and the earlier run's steps
        move to checkpoints/earlier-<time>/, so this run starts afresh at step 0.
        `params_only` (evaluation) restores just the params of a matching checkpoint.
        """
        failures, changed = [], []
        for step in reversed(self.all_steps()):
            try:
                checksums = checksum_lib.saved(self.manager, self.directory, step)
                saved = self.manager.restore(step, args=ocp.args.Composite(
                    config=ocp.args.JsonRestore()))["config"]
                checksum_lib.check_item(checksums, "config", saved)
            except Exception as e:  # noqa: BLE001 - a step that does not read is corrupt
                failures.append((step, e))
                continue
            must, changed = config_differences(saved, self.config_json)
            if must and not weights_only:
                raise CheckpointMismatchError(
                    f"{self.directory} holds checkpoints of a different config (newest: step "
                    f"{step}): " + "; ".join(must) + ". Use a new --workdir for this config, "
                    "set these keys back to resume, or pass --load_weights_only to start "
                    "this config from the checkpoint's parameters")
            error = None
            try:
                restored = self._restore_step(step, abstract_state, params_only or bool(must),
                                              checksums)
            except Exception as e:  # noqa: BLE001 - unreadable, or not what was saved
                error = e
            if _all_agree(error is None):  # only then: the check is a collective of every process
                error = checksum_lib.check_arrays(checksums, restored.state)
            if not _all_agree(error is None):
                failures.append((step, error or RuntimeError("failed on another process")))
                continue
            moved = self._move_aside([s for s, _ in failures], "corrupt", stamp=True, quiet=True)
            if jax.process_index() == 0:  # one line per bad step
                for failed, e in failures:
                    log.warning("checkpoint step %d under %s does not restore (%s); using step %d "
                                "instead%s", failed, self.directory, first_line(e), step,
                                f"; moved it to {moved[failed]}" if failed in moved else "")
            if must:  # weights only: this run starts afresh, so the earlier steps make way
                self._move_aside(self.all_steps(), f"earlier-{time.strftime('%Y%m%d-%H%M%S')}")
                return restored._replace(step=0, changes=must)
            return restored._replace(changes=changed)
        if failures:
            raise CheckpointError(
                f"no checkpoint under {self.directory} restores: " + "; ".join(
                    f"step {s}: {first_line(e)}" for s, e in failures) +
                (". Keys changed since the newest readable one: " + "; ".join(changed)
                 if changed else "") +
                ". Nothing was moved or deleted: fix the cause, move those steps away, or use "
                "a new --workdir")
        return None

    def _restore_step(self, step, abstract_state, params_only, checksums):
        """The step restored, its data item checked against its checksum (the arrays are
        checked by the caller, once every process has restored them)."""
        if params_only:  # a checkpointer of its own: the manager's "state" handler stays Standard
            target = {"params": abstract_state.params}
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
                params = checkpointer.restore(self.directory / str(step) / "state",
                                              args=ocp.args.PyTreeRestore(
                    item=target, partial_restore=True,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
            return Restored(step, params, None, [], params_only=True)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        checksum_lib.check_item(checksums, "data", restored["data"])
        data_state = data_state_for(restored["data"], jax.process_index(), jax.process_count())
        return Restored(step, restored["state"], data_state, [])

    def _move_aside(self, steps, folder, stamp=False, quiet=False):
        """Moves step directories to checkpoints/<folder>/: kept, but out of the manager's
        sight; returns {step: where it went} (on process 0). Process 0 moves, every process
        waits. Read-only: nothing moves."""
        if self.read_only or not steps:
            return {}
        moved = {}
        if jax.process_index() == 0:
            (self.directory / folder).mkdir(parents=True, exist_ok=True)
            suffix = time.strftime("-%Y%m%d-%H%M%S") if stamp else ""
            for step in steps:
                moved[step] = self.directory / folder / f"{step}{suffix}"
                (self.directory / str(step)).rename(moved[step])
                if not quiet:
                    log.warning("moved checkpoint step %d to %s", step, moved[step])
        _sync(f"mmjax_checkpoint_move_{folder}")
        self.manager.reload()
        return moved

    def wait(self):
        """Blocks until the last save is committed (raises if it failed)."""
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


class PreemptionNotice:
    """`notice(step)` is True at the step where the job should save and stop.

    Under `jax.distributed` this is JAX's preemption sync point: its notifier catches
    SIGTERM on any process and every process sees True at the same step. A single process
    installs a SIGTERM handler that only sets a flag, checked once a step. Either way a
    second SIGTERM during the save changes nothing. `close()` puts the old handler back,
    unless a notice came: then SIGTERMs stay ignored, so the exit after the save stays clean.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        if not jax.distributed.is_initialized() and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def __call__(self, step) -> bool:
        if jax.distributed.is_initialized():
            return ocp.multihost.reached_preemption(step)
        return self.received

    def close(self):
        if self._previous is not None and not self.received:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
