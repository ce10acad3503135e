"""Early stopping on a validation metric: keeps the best parameters and says which step.

`config.train.early_stop`: `metric` (a key the evaluators write, e.g.
'eval/classify/accuracy'; '' for off), `mode` ('max' | 'min'), `patience` (evaluations
without improvement before stopping; 0: never stop, only keep the best). The best params go
to WORKDIR/best (an `mmjax export --format params` dir: `config.init.source` takes it) and
WORKDIR/best.json records the step, the value and the count since; a resumed run reads it.
"""

import json

import jax
import orbax.checkpoint as ocp

from mmjax import paths

BEST_DIR, BEST_FILE = "best", "best.json"


class EarlyStopping:
    """`update` after each evaluation; `record` holds the best step and value, the number of
    evaluations since, whether the run stopped, and the history it is computed from (so a run
    resumed at step s forgets what it logged after s, which it will replay)."""

    def __init__(self, config, workdir, start=0):
        c = config.train.get("early_stop", {})
        self.metric, self.mode, self.patience = c.get("metric", ""), c.get("mode", "max"), c.get("patience", 0)
        if self.mode not in ("max", "min"):
            raise ValueError(f"train.early_stop.mode={self.mode!r}; valid: 'max', 'min'")
        self.config, self.workdir = config, paths.resolve(workdir)
        self.history = []
        path = self.workdir / BEST_FILE
        if self.metric and path.exists():
            self.history = [h for h in json.loads(path.read_text())["history"] if h[0] <= start]
        self.record = self._summarise()

    @property
    def enabled(self):
        return bool(self.metric)

    def _better(self, value, best):
        return best is None or (value > best if self.mode == "max" else value < best)

    def _summarise(self):
        record = {"step": None, "value": None, "since": 0, "stopped": False}
        for step, value in self.history:
            if self._better(value, record["value"]):
                record.update(step=step, value=value, since=0)
            else:
                record["since"] += 1
        record["stopped"] = bool(self.patience) and record["since"] >= self.patience
        return record

    def update(self, step, results, params) -> bool:
        """Records an evaluation; saves params when they are the best so far. True: stop now."""
        if not self.enabled or self.metric not in results:
            return False
        value = float(results[self.metric])
        if self._better(value, self.record["value"]):
            self._save(params)
        self.history.append([step, value])
        self.record = self._summarise()
        if jax.process_index() == 0:
            paths.write_text(self.workdir / BEST_FILE, json.dumps(
                self.record | {"metric": self.metric, "mode": self.mode, "history": self.history}))
        return self.record["stopped"]

    def _save(self, params):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(self.workdir / BEST_DIR / "params", params, force=True)
        checkpointer.wait_until_finished()
        if jax.process_index() == 0:
            paths.write_text(self.workdir / BEST_DIR / "config.json", self.config.to_json(indent=2))

    def summary(self) -> str:
        r = self.record
        return (f"best {self.metric} {r['value']:.4f} at step {r['step']} (params in "
                f"{self.workdir / BEST_DIR})" if r["step"] is not None else "no best yet")
