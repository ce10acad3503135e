"""Evaluators from `config.evals`: {name: {type, dataset, split, every, batch_size, ...}}.

Each entry builds the evaluator its `type` names (`EVALUATORS`) into an object with
`run(params) -> {metric: float}` and an `every` (steps); the loop writes the metrics as
`eval/<name>/<metric>`. An empty `config.evals` means the task's default evaluators.
"""

from mmjax.registry import Registry

EVALUATORS = Registry("evaluator", {"zeroshot": "mmjax.eval.zeroshot",
                                    "retrieval": "mmjax.eval.retrieval",
                                    "mlm": "mmjax.eval.mlm",
                                    "classify": "mmjax.eval.classify"})


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
