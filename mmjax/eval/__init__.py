"""Evaluators from `config.evals`: {name: {type, dataset, split, every, batch_size, ...}}.

Each entry builds the evaluator its `type` names (`EVALUATORS`) into an object with
`run(params) -> {metric: float}` and an `every` (steps); the loop writes the metrics as
`eval/<name>/<metric>`. An empty `config.evals` means the task's default evaluators.
"""

from mmjax.errors import ConfigError
from mmjax.registry import EVALUATORS  # the table lives in mmjax/registry.py


def specs(config, task) -> dict:
    """{name: spec dict} of the run: `config.evals`, else the task's defaults; each entry
    completed with `config.eval`'s split / batch_size / seed and `train.eval_every`."""
    entries = {k: dict(v) for k, v in config.get("evals", {}).items()} or task.default_evals()
    base = dict(split=config.eval.split, batch_size=config.eval.batch_size, seed=config.eval.seed,
                every=config.train.eval_every)
    return {name: base | entry for name, entry in entries.items()}


def build(run, data_dir) -> dict:
    """{name: evaluator} of a train.setup.Run."""
    return {name: EVALUATORS.get(spec["type"])(run, spec, data_dir)
            for name, spec in specs(run.config, run.task).items()}


def from_command_line(text: str, data_dir) -> dict:
    """`config.evals` entries of 'TYPE:DATASET[:SPLIT],...' (`mmjax eval --evals`), named
    TYPE_DATASET; a missing split is the dataset's test split, else validation, else train."""
    from mmjax.data import sources
    entries = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"--evals item {item!r}: write TYPE:DATASET or TYPE:DATASET:SPLIT, "
                              f"e.g. zeroshot:my_photos (types: {', '.join(EVALUATORS.names())})")
        kind, dataset, *split = parts
        if kind not in EVALUATORS.names():
            raise ConfigError(f"--evals item {item!r}: unknown evaluator type {kind!r}; valid: "
                              f"{', '.join(EVALUATORS.names())}")
        if not split:
            splits = getattr(sources.get(dataset, data_dir), "splits", None) or {"test": 0}
            split = [next(s for s in ("test", "validation", "train", *splits) if s in splits)]
        entries[f"{kind}_{dataset}"] = dict(type=kind, dataset=dataset, split=split[0])
    return entries
