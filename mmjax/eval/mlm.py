"""Held-out masked-token accuracy and perplexity, next to always predicting the most frequent
token."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator
from mmjax.tasks.mlm import masker


def most_frequent_token(tokens, special_ids, vocab_size):
    """The most common non-special id in a [n, l] array of token ids."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size)
    counts[list(special_ids)] = 0
    return int(np.argmax(counts))


def masked_accuracy(predictions, labels, weights, baseline_token):
    """(accuracy, baseline accuracy) over the positions with weight > 0."""
    w = np.asarray(weights) > 0
    return (float(np.mean(np.asarray(predictions)[w] == np.asarray(labels)[w])),
            float(np.mean(np.asarray(labels)[w] == baseline_token)))


def perplexity(nll, weights):
    """exp of the mean negative log-likelihood over the positions with weight > 0."""
    w = np.asarray(weights) > 0
    return float(np.exp(np.mean(np.asarray(nll, np.float64)[w])))


@EVALUATORS.register("mlm")
class MaskedLM(Evaluator):
    """Accuracy of the model's `mlm_logits` at BERT-masked positions of a text split (example
    i masked with fold_in(PRNGKey(seed), i), whatever the batch size or process count), and
    the most-frequent-token baseline counted on the dataset's train split."""

    needs = ("mlm_logits",)

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.batch_spec = {"text": jax.ShapeDtypeStruct(
            (run_setup.config.model.text.context_length,), np.int32)}
        self.mask = masker(run_setup.config, run_setup.tokenizer)
        self.baseline = None

    def _baseline(self):
        tok, length = self.setup.tokenizer, self.setup.config.model.text.context_length
        counts = np.zeros(tok.vocab_size, np.int64)
        texts = self.dataset.texts(self.data_dir, "train")
        while chunk := [t for _, t in zip(range(1024), texts)]:
            counts += np.bincount(tok.encode(chunk, length).ravel(), minlength=tok.vocab_size)
        counts[list(tok.special_ids)] = 0
        return int(np.argmax(counts))

    def _predict(self, params, batch, index):
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
            jax.random.PRNGKey(self.spec["seed"]), batch["_index"])
        masked = jax.vmap(lambda key, row: jax.tree.map(lambda x: x[0], self.mask(key, row[None])))(
            keys, batch["text"])
        logits = self.apply(params, (masked["inputs"], masked["positions"]), "mlm_logits")
        log_probs = jax.nn.log_softmax(logits.astype(np.float32), axis=-1)
        nll = -jnp.take_along_axis(log_probs, masked["labels"][..., None], axis=-1)[..., 0]
        return {"pred": logits.argmax(-1), "labels": masked["labels"], "weights": masked["weights"],
                "nll": nll}

    def run(self, params):
        if self.baseline is None:
            self.baseline = self._baseline()
        out = self.map_split(self._predict, params, self.batch_spec)
        acc, base = masked_accuracy(out["pred"], out["labels"], out["weights"], self.baseline)
        return {"accuracy": acc, "baseline_accuracy": base,
                "perplexity": perplexity(out["nll"], out["weights"])}
