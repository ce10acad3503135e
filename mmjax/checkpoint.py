"""Orbax checkpoints of a run: async saves of the train state, data position and config; resume."""

import json
import logging

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves `state` (sharded pytree), `data` (grain's iterator state, JSON bytes) and `config`
    (JSON) every N steps under WORKDIR/checkpoints; keeps the newest `keep` and every
    `keep_period`-th step for good; restores newest-first onto any mesh."""

    def __init__(self, directory, config, *, keep=3, keep_period=None, async_save=True):
        self.config_json = json.loads(config.to_json())
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period or None,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_names=("state", "data", "config"))

    def save(self, step, state, data_state, force=False):
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"iterator": data_state.decode()}),
            config=ocp.args.JsonSave(self.config_json)), force=force)

    def latest_step(self):
        return self.manager.latest_step()

    def restore(self, abstract_state, step=None):
        """(step, state, data_state) of `step` (default: the newest), or None without any.

        `abstract_state` holds ShapeDtypeStructs with the target shardings, so a checkpoint
        written on one mesh is laid out on whatever mesh this run has."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore()))
        return step, restored["state"], restored["data"]["iterator"].encode()

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()
