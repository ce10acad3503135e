"""Next-sentence prediction accuracy on held-out sentence pairs, next to the majority answer."""

import numpy as np

from mmjax.data.sentence_pairs import LABEL, TYPES
from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator
from mmjax.tasks.mlm_nsp import batch_spec


def nsp_accuracy(predictions, labels):
    """(accuracy, majority-label accuracy, fraction of random B) of [n] predictions / labels."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    random_fraction = float(np.mean(labels == 1))
    return (float(np.mean(predictions == labels)), max(random_fraction, 1 - random_fraction),
            random_fraction)


@EVALUATORS.register("nsp")
class NextSentence(Evaluator):
    """Does the model's `nsp_logits` tell whether B follows A? One pair per record of the split
    (`[CLS] A [SEP] B [SEP]`, mmjax/data/sentence_pairs.py; B from the same split), drawn from
    the record's index alone: the same pairs on any batch size or process count."""

    needs = ("nsp_logits",)

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.batch_spec = batch_spec(run_setup.config.model.text.context_length)

    def _predict(self, params, batch, index):
        logits = self.apply(params, (batch["text"], batch[TYPES]), "nsp_logits")
        return {"pred": logits.argmax(-1), "label": batch[LABEL]}

    def run(self, params):
        out = self.map_split(self._predict, params, self.batch_spec)
        accuracy, baseline, random_fraction = nsp_accuracy(out["pred"], out["label"])
        return {"accuracy": accuracy, "baseline_accuracy": baseline,
                "random_fraction": random_fraction}
