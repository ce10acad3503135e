"""Tasks: what a run trains. `TASKS.get(config.task)(config, tokenizer)` gives the model,
the named loss terms, the batch spec and the default evaluators (see tasks/base.py)."""

from mmjax.registry import TASKS  # the table lives in mmjax/registry.py


def get(config, tokenizer):
    """The task object `config.task` names, for this config and tokenizer."""
    return TASKS.get(config.task)(config, tokenizer)
