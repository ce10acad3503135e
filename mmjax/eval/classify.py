"""Classification accuracy of the model's logits on a labelled split (the classify task)."""

import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator


@EVALUATORS.register("classify")
class Accuracy(Evaluator):
    """Top-1 accuracy, mean per-class recall and cross-entropy of `model(inputs)` logits."""

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.batch_spec = run_setup.task.batch_spec()
        self.input_keys = tuple(k for k in self.batch_spec if k != "label")   # e.g. image, text

    def _logits(self, params, batch, index):
        inputs = tuple(batch[k] for k in self.input_keys)
        return {"logits": self.apply(params, inputs, None), "label": batch["label"]}

    def run(self, params):
        out = self.map_split(self._logits, params, self.batch_spec)
        logits, labels = np.float64(out["logits"]), out["label"]
        predicted = logits.argmax(-1)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        recalls = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
        return {"accuracy": float(np.mean(predicted == labels)),
                "mean_class_recall": float(np.mean(recalls)),
                "loss": float(-np.mean(log_probs[np.arange(len(labels)), labels]))}
