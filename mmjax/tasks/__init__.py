"""Tasks: what a run trains. `TASKS.get(config.task)(config, tokenizer)` gives the model,
the named loss terms, the batch spec and the default evaluators (see tasks/base.py)."""

from mmjax.registry import Registry

TASKS = Registry("task", {"clip": "mmjax.tasks.clip", "mlm": "mmjax.tasks.mlm",
                          "clip+mlm": "mmjax.tasks.clip_mlm", "classify": "mmjax.tasks.classify"})


def get(config, tokenizer):
    """The task object `config.task` names, for this config and tokenizer."""
    return TASKS.get(config.task)(config, tokenizer)
