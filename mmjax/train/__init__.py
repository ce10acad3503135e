"""Training: run setup, state, step, loop."""

from mmjax.errors import BadData, TrainingDiverged  # noqa: F401  (their old home)
