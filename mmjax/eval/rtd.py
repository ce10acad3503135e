"""Held-out replaced-token detection: the discriminator's accuracy and ROC-AUC on tokens its own
generator replaced, next to always answering "original"."""

import jax
import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator
from mmjax.tasks.mlm import masker
from mmjax.tasks.rtd import replace_tokens, sample


def roc_auc(labels, scores):
    """Area under the ROC curve of `scores` [n] for binary `labels` [n]: the probability that a
    random positive scores above a random negative, ties counting one half (Mann-Whitney U,
    with tied scores given their mean rank). NaN without both classes."""
    labels, scores = np.asarray(labels) > 0, np.asarray(scores, np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # tied runs share the mean of their 1-based ranks
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def detection_metrics(logits, labels, weights):
    """{accuracy, baseline_accuracy (always "original"), replaced_accuracy (on the replaced
    tokens alone), roc_auc, replaced_fraction, tokens} over the tokens with weight > 0."""
    w = np.asarray(weights) > 0
    scores, replaced = np.asarray(logits, np.float64)[w], np.asarray(labels)[w] > 0
    said = scores > 0
    return {"accuracy": float(np.mean(said == replaced)), "baseline_accuracy": float(np.mean(~replaced)),
            "replaced_accuracy": float(np.mean(said[replaced])) if replaced.any() else float("nan"),
            "roc_auc": roc_auc(replaced, scores), "replaced_fraction": float(np.mean(replaced)),
            "tokens": int(w.sum())}


@EVALUATORS.register("rtd")
class ReplacedTokenDetection(Evaluator):
    """Example i of a text split is masked and filled from the generator with keys from
    fold_in(PRNGKey(seed), i) (the same corruption whatever the batch size or process count);
    the discriminator's per-token logits are scored against which tokens changed."""

    needs = ("generator_logits", "discriminator_logits")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.batch_spec = {"text": jax.ShapeDtypeStruct(
            (run_setup.config.model.text.context_length,), np.int32)}
        self.mask = masker(run_setup.config, run_setup.tokenizer)
        self.pad_id = int(run_setup.config.model.text.get("pad_id", 0))

    def _predict(self, params, batch, index):
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            jax.random.PRNGKey(self.spec["seed"]), batch["_index"])
        mask_keys, sample_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        masked = jax.vmap(lambda key, row: jax.tree.map(lambda x: x[0], self.mask(key, row[None])))(
            mask_keys, batch["text"])
        logits = self.apply(params, (masked["inputs"], masked["positions"]), "generator_logits")
        fake = replace_tokens(batch["text"], masked["positions"], masked["weights"],
                              jax.vmap(sample)(sample_keys, logits), self.pad_id)
        return {"logits": self.apply(params, (fake["inputs"],), "discriminator_logits"),
                "labels": fake["labels"], "weights": fake["weights"]}

    def run(self, params):
        out = self.map_split(self._predict, params, self.batch_spec)
        return detection_metrics(out["logits"], out["labels"], out["weights"])
