"""What a task is: a model, named loss terms with weights, a batch spec, default evaluators.

The train step sums the terms (`train/step.py`); the loop, the evaluators and the benchmarks
only ask the task. Two kinds of term, because gradient accumulation treats them differently:

- `ExampleTerm`: a mean over the examples of a (micro)batch, `fn(params, batch, rng) ->
  (loss, metrics)`. Accumulated as the mean of the microbatch gradients.
- `BatchTerm`: a loss over the whole global batch of per-example embeddings (contrastive),
  `embed(params, batch) -> (per_example, shared)` and `loss(per_example, shared) -> (loss,
  metrics)`. `per_example` leaves have the batch as their leading axis; `shared` leaves
  (a logit scale) do not. Accumulated by gradient caching: every microbatch is embedded
  first, the loss sees all of them, then each microbatch's embedding gradient is pulled
  back to the params.
"""

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from mmjax.config import parse_mixture


@dataclasses.dataclass(frozen=True)
class ExampleTerm:
    fn: Callable
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class BatchTerm:
    embed: Callable
    loss: Callable
    weight: float = 1.0


class Task:
    """Base class. A subclass sets `unit` and implements the methods that raise here."""

    unit = "examples"     # what `examples_per_step` counts, for throughput ('pairs', 'tokens')

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer   # None is fine for tasks that read no text

    def build_model(self):
        """The flax module (a pure function of params and inputs)."""
        raise NotImplementedError

    def init_args(self, batch_size: int = 1) -> tuple[str, tuple]:
        """(method name, example inputs) whose `model.init` touches every parameter."""
        raise NotImplementedError

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Per-example shape and dtype of each key a training batch holds."""
        raise NotImplementedError

    def loss_terms(self, model, mesh) -> dict:
        """{name: ExampleTerm | BatchTerm}; the step logs `<name>_loss` for each."""
        raise NotImplementedError

    def train_datasets(self) -> list[str]:
        """The names in `config.data.train` (a dataset or a mixture), in order."""
        return [name for name, _ in parse_mixture(self.config.data.train)]

    def default_evals(self) -> dict:
        """{name: evaluator spec} used when `config.evals` lists none."""
        return {}

    def examples_per_step(self) -> int:
        return self.config.train.batch_size

    def train_flops(self) -> int | None:
        """Model FLOPs of one train step (mmjax/flops.py), or None if not known."""
        return None

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zeros shaped like a batch of `batch_size` (for shapes, not for training)."""
        return {k: np.zeros((batch_size, *s.shape), s.dtype) for k, s in self.batch_spec().items()}
