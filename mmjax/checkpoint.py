"""Orbax checkpoints of a run: async saves, keep-N, exact resume, fallback past corrupt steps
(unreadable ones, and ones whose arrays do not match the checksums saved with them),
`verify`, preemption."""

import hashlib
import json
import logging
import signal
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mmjax import paths
from mmjax.errors import CheckpointError, CheckpointMismatchError

log = logging.getLogger(__name__)

# Keys of the config that make a checkpoint what it is: they must match to resume from it.
# Everything else (train.steps, mesh, optimiser settings, ...) may change between runs.
MATCH_KEYS = ("task", "seed", "model", "data", "optim.name")
# ... except these, which change how the model computes or the input is read, not what.
COMPUTE_KEYS = ("model.dtype", "model.remat", "model.attention", "model.prune_last_layer",
                "data.worker_count", "data.max_bad_fraction")


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


def _first_line(error):
    """'Type: first line of the message' (TensorStore's go on for pages)."""
    text = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
    return f"{type(error).__name__}: {text}"[:300]


# --- Checksums ---------------------------------------------------------------------------
# Orbax checks the structure of a step (TensorStore's OCDBT b-tree nodes carry a crc32c),
# but array chunks above 1 KiB are stored as plain values in its data files: flipped bytes
# there restore without a word. So a step also saves a checksum of every array, computed
# where the data is (one jitted integer reduction over the global value: exact, so every
# mesh, every process and the host agree on it) and checked after every restore.

ITEMS = ("state", "data", "config", "checksums")
CHECKSUMS_FORMAT = 1
_GOLDEN = 0x9E3779B9


def _fmix32(h):
    """MurmurHash3's finaliser: every input bit flips each output bit with probability 1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _array_sum(x):
    """The sum (mod 2^32) over the elements of fmix32(bits + flat index x golden ratio).

    Exact integer arithmetic, so it is the same for any sharding, reduction order or device.
    Each element's term is a bijection of its bits, so a change to any one element always
    changes the sum; several changed elements cancel out with probability 2^-32."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 8:  # two 32-bit words per element: a trailing axis of 2
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        bits = bits + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(
            stride * _GOLDEN % 2**32)
        stride *= bits.shape[axis]
    return jnp.sum(_fmix32(bits), dtype=jnp.uint32)


_tree_sums = jax.jit(lambda leaves: [_array_sum(x) for x in leaves])
_one_sum = jax.jit(_array_sum)


def _key_name(key):
    for field in ("name", "key", "idx"):  # GetAttrKey, DictKey / FlattenedIndexKey, SequenceKey
        if hasattr(key, field):
            return str(getattr(key, field))
    return str(key)


def array_name(path) -> str:
    """'params/text/token_embed/embedding': a leaf's key path as the checkpoint names it (the
    same for the TrainState and for the nested dicts orbax reads back)."""
    return "/".join(_key_name(k) for k in path)


def _is_array(leaf):
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def array_checksums(tree) -> dict:
    """{array name: 8 hex digits} of every array in `tree`, computed where the arrays are
    (one jitted program; sharded arrays: every process calls it and gets the same answer)."""
    named = [(array_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
             if _is_array(x)]
    sums = jax.device_get(_tree_sums([x for _, x in named]))
    return {name: f"{int(total):08x}" for (name, _), total in zip(named, sums)}


def _host_checksum(array) -> str:
    """The checksum of one numpy array, on this host's CPU (what `array_checksums` gives)."""
    with jax.default_device(jax.devices("cpu")[0]):
        return f"{int(jax.device_get(_one_sum(array))):08x}"


def _json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _mismatched(saved: dict, computed: dict) -> list:
    """The names in `computed` whose checksum differs from the saved one, sorted."""
    return sorted(name for name, value in computed.items() if saved.get(name, value) != value)


def _describe_mismatch(names) -> str:
    if len(names) == 1:
        return f"{names[0]} does not match the checksum saved with it"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} arrays do not match the checksums saved with them: {shown}"


def _saved_checksums(manager, directory, step):
    """The checksums saved with `step`, or None for a step of an mmjax before them."""
    if not (directory / str(step) / "checksums").exists():
        return None
    saved = manager.restore(step, args=ocp.args.Composite(
        checksums=ocp.args.JsonRestore()))["checksums"]
    if saved.get("format") != CHECKSUMS_FORMAT:
        raise CheckpointError(f"checksums of an unknown format {saved.get('format')!r}")
    return saved


def _check_arrays(checksums, tree):
    """A CheckpointError naming the arrays of `tree` that differ from `checksums`, or None.
    Every process calls it (with or without saved checksums: the sums are a collective) and
    gets the same verdict: the sums are of the global values."""
    computed = array_checksums(tree)
    bad = _mismatched(checksums["arrays"], computed) if checksums is not None else []
    return CheckpointError(_describe_mismatch(bad)) if bad else None


def _item_matches(checksums, item, value) -> bool:
    digest = _json_digest(value)
    return checksums is None or checksums["items"].get(item, digest) == digest


def _check_item(checksums, item, value):
    if not _item_matches(checksums, item, value):
        raise CheckpointError(f"the {item!r} item does not match the checksum saved with it")


class Checkpointer:
    """Saves `state` (sharded pytree), `data` (every process's grain iterator state) and
    `config` (JSON) under WORKDIR/checkpoints/<step>; keeps the newest `keep` and every
    `keep_period`-th step for good; restores newest-first onto any mesh.

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
        items = {"data": _json_digest(data), "config": _json_digest(self.config_json)}
        checksums = {"format": CHECKSUMS_FORMAT, "arrays": array_checksums(state), "items": items}
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
                checksums = _saved_checksums(self.manager, self.directory, step)
                saved = self.manager.restore(step, args=ocp.args.Composite(
                    config=ocp.args.JsonRestore()))["config"]
                _check_item(checksums, "config", saved)
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
                error = _check_arrays(checksums, restored.state)
            if not _all_agree(error is None):
                failures.append((step, error or RuntimeError("failed on another process")))
                continue
            moved = self._move_aside([s for s, _ in failures], "corrupt", stamp=True, quiet=True)
            if jax.process_index() == 0:  # one line per bad step
                for failed, e in failures:
                    log.warning("checkpoint step %d under %s does not restore (%s); using step %d "
                                "instead%s", failed, self.directory, _first_line(e), step,
                                f"; moved it to {moved[failed]}" if failed in moved else "")
            if must:  # weights only: this run starts afresh, so the earlier steps make way
                self._move_aside(self.all_steps(), f"earlier-{time.strftime('%Y%m%d-%H%M%S')}")
                return restored._replace(step=0, changes=must)
            return restored._replace(changes=changed)
        if failures:
            raise CheckpointError(
                f"no checkpoint under {self.directory} restores: " + "; ".join(
                    f"step {s}: {_first_line(e)}" for s, e in failures) +
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
        _check_item(checksums, "data", restored["data"])
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


def verify(directory, step=None, group_bytes=1 << 30) -> dict:
    """Reads every step under `directory` (or just `step`) on this host and checks each array
    and JSON item against the checksums saved with it. Moves, writes and deletes nothing.

    Returns {"directory", "ok", "steps": [one report per step]}; a report holds "step", "ok",
    "arrays" (how many were read) and, where there are any, "bad_arrays" (names whose values
    differ from their checksums), "bad_items", "unreadable" ({name: first line of the error}),
    "unverified" (a step saved without checksums is only read) and "no_checksum" (arrays
    the saved checksums do not name: read, not checked). Arrays are read as numpy
    a group of at most `group_bytes` at a time: the host needs memory for the largest array,
    not the whole state. Steps already moved to corrupt/ are not looked at, nor ones a
    running job deletes (keep-N) while they are read.
    """
    directory = paths.resolve(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} not found: --workdir must be a directory that "
                                f"`mmjax train` wrote")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           cleanup_tmp_directories=False)
    manager = ocp.CheckpointManager(directory, item_names=ITEMS, options=options)
    try:
        steps = sorted(manager.all_steps())
        if step is not None and step not in steps:
            raise CheckpointError(f"no checkpoint step {step} under {directory}; "
                                  f"steps there: {steps}")
        reports = [_verify_step(manager, directory, s, group_bytes)
                   for s in (steps if step is None else [step])]
        # A step a running job deleted meanwhile (keep-N) is gone, not corrupt.
        reports = [r for r in reports if r["ok"] or (directory / str(r["step"])).exists()]
    finally:
        manager.close()
    return {"directory": str(directory), "ok": all(r["ok"] for r in reports), "steps": reports}


def _verify_step(manager, directory, step, group_bytes):
    report, unreadable, bad_items, bad_arrays = {"step": step}, {}, [], []
    try:
        checksums = _saved_checksums(manager, directory, step)
        if checksums is None:
            report["unverified"] = "saved without checksums (an older mmjax): only read"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        checksums, unreadable["checksums"] = None, _first_line(e)
    for item in ("config", "data"):
        try:
            value = manager.restore(step, args=ocp.args.Composite(
                **{item: ocp.args.JsonRestore()}))[item]
        except Exception as e:  # noqa: BLE001
            unreadable[item] = _first_line(e)
            continue
        if not _item_matches(checksums, item, value):
            bad_items.append(item)
    count, no_checksum = 0, []
    try:
        for name, value in _state_arrays(directory / str(step) / "state", group_bytes):
            if isinstance(value, Exception):
                unreadable[name] = _first_line(value)
                continue
            count += 1
            if checksums is None:
                continue
            if name not in checksums["arrays"]:
                no_checksum.append(name)
            elif checksums["arrays"][name] != _host_checksum(value):
                bad_arrays.append(name)
    except Exception as e:  # noqa: BLE001 - the item's metadata does not read
        unreadable["state"] = _first_line(e)
    report.update(ok=not (bad_arrays or bad_items or unreadable), arrays=count)
    for key, value in (("bad_arrays", sorted(bad_arrays)), ("bad_items", bad_items),
                       ("unreadable", unreadable), ("no_checksum", no_checksum)):
        if value:
            report[key] = value
    return report


def _state_arrays(state_dir, group_bytes):
    """Yields (name, numpy array, or the error reading it) for each array of a step's state,
    reading a group of at most `group_bytes` at a time (the other arrays left unread)."""
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        flat, treedef = jax.tree_util.tree_flatten_with_path(
            checkpointer.metadata(state_dir).item_metadata.tree)
        names, leaves = [array_name(p) for p, _ in flat], [leaf for _, leaf in flat]
        restore_args = treedef.unflatten([ocp.RestoreArgs(restore_type=np.ndarray)] * len(leaves))

        def read(indices):
            wanted = set(indices)
            target = treedef.unflatten([
                jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) if i in wanted else ocp.PLACEHOLDER
                for i, leaf in enumerate(leaves)])
            restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args))
            values = jax.tree_util.tree_flatten(restored, is_leaf=lambda x: x is ocp.PLACEHOLDER)[0]
            return {i: values[i] for i in indices}

        def read_alone(i):
            try:
                return read([i])[i]
            except Exception as e:  # noqa: BLE001 - reported by the caller
                return e

        for group in _groups(leaves, group_bytes):
            try:
                values = read(group)
            except Exception:  # noqa: BLE001 - one by one, to name the arrays that do not read
                values = {i: read_alone(i) for i in group}
            for i in group:
                yield names[i], values[i]


def _groups(leaves, limit):
    """Lists of leaf indices of at most `limit` bytes each (an array larger than that alone)."""
    groups, size = [[]], 0
    for i, leaf in enumerate(leaves):
        if not _is_array(leaf):
            continue
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes
    return [g for g in groups if g]


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
