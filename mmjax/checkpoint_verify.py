"""`mmjax verify`: a run's checkpoint steps read on this host's CPU and checked against the
checksums saved with them (mmjax/checksums.py), safe next to a running job: it moves,
writes and deletes nothing, and reports rather than raises."""

import jax
import numpy as np
import orbax.checkpoint as ocp

from mmjax import checksums as checksum_lib
from mmjax import paths
from mmjax.checkpoint import ITEMS, first_line
from mmjax.errors import CheckpointError


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
        checksums = checksum_lib.saved(manager, directory, step)
        if checksums is None:
            report["unverified"] = "saved without checksums (an older mmjax): only read"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        checksums, unreadable["checksums"] = None, first_line(e)
    for item in ("config", "data"):
        try:
            value = manager.restore(step, args=ocp.args.Composite(
                **{item: ocp.args.JsonRestore()}))[item]
        except Exception as e:  # noqa: BLE001
            unreadable[item] = first_line(e)
            continue
        if not checksum_lib.item_matches(checksums, item, value):
            bad_items.append(item)
    count, no_checksum = 0, []
    try:
        for name, value in _state_arrays(directory / str(step) / "state", group_bytes):
            if isinstance(value, Exception):
                unreadable[name] = first_line(value)
                continue
            count += 1
            if checksums is None:
                continue
            if name not in checksums["arrays"]:
                no_checksum.append(name)
            elif checksums["arrays"][name] != checksum_lib.host_checksum(value):
                bad_arrays.append(name)
    except Exception as e:  # noqa: BLE001 - the item's metadata does not read
        unreadable["state"] = first_line(e)
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
        names, leaves = [checksum_lib.array_name(p) for p, _ in flat], [leaf for _, leaf in flat]
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
        if not checksum_lib.is_array(leaf):
            continue
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes
    return [g for g in groups if g]
