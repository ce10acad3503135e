"""A JAX profiler trace of chosen train steps (`train.profile`), for TensorBoard's profile
plugin or Perfetto: steps [start_step, start_step + steps) on process 0, or on every process.

The trace (`plugins/profile/<time>/<host>.xplane.pb`) goes under WORKDIR/tensorboard, beside
the run's scalars: `tensorboard --logdir WORKDIR/tensorboard`, then the Profile tab. Starting
a trace costs a second or two and the traced steps run slower; pick steps after the first
(compilation) and away from evaluations.
"""

import jax

from mmjax import paths


class Profiler:
    """`before(step, state)` at the top of each step; `close(state)` after the loop."""

    def __init__(self, options, workdir):
        options = dict(options or {})
        self.start, self.steps = int(options.get("start_step", 0)), int(options.get("steps", 0))
        here = options.get("all_processes", False) or jax.process_index() == 0
        self.enabled = self.steps > 0 and here
        self.log_dir = paths.join(workdir, "tensorboard")
        self.running = False

    def before(self, step, state):
        """Starts the trace before `start_step`; stops it once `steps` steps have run (after
        waiting for them: the device work belongs in the trace)."""
        if not self.enabled:
            return
        if step == self.start and not self.running:
            jax.profiler.start_trace(self.log_dir)
            self.running = True
        elif step == self.start + self.steps and self.running:
            self.close(state)

    def close(self, state):
        if self.running:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.running = False
