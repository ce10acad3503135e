"""Training: run setup, state, step, loop. `TrainingDiverged` lives here, free of jax, so the
CLI can name it without importing the loop."""


class TrainingDiverged(RuntimeError):
    """Too many steps in a row had non-finite gradients; the checkpoints hold finite params."""


class BadData(ValueError):
    """More training records failed to decode than `data.max_bad_fraction` allows."""
