"""Held-out next-token perplexity and accuracy, next to a unigram model's perplexity."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator
from mmjax.tasks.lm import end_id, target_weights


def unigram_log_probs(counts):
    """log p(token) of unigram counts [V], add-one smoothed (a token unseen in training still
    has a finite perplexity)."""
    counts = np.asarray(counts, np.float64) + 1.0
    return np.log(counts / counts.sum())


@EVALUATORS.register("lm")
class NextTokenLM(Evaluator):
    """Each text of the split as one row (start token, text, end token, padding): perplexity
    exp(mean NLL) and argmax accuracy over its targets (the text and its end token), and
    the perplexity of a unigram model (`unigram_perplexity`) counted on the dataset's train
    split with the same targets."""

    needs = ("lm_logits",)

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.length = run_setup.config.model.text.context_length
        self.batch_spec = {"text": jax.ShapeDtypeStruct((self.length,), np.int32)}
        self.eos = end_id(run_setup.tokenizer)
        self.unigram = None

    def _unigram(self):
        """log p of each token id, counted over the targets of the train split's rows."""
        tok = self.setup.tokenizer
        counts = np.zeros(tok.vocab_size, np.int64)
        texts = self.dataset.texts(self.data_dir, "train")
        while chunk := [t for _, t in zip(range(1024), texts)]:
            rows = tok.encode(chunk, self.length)
            w = np.asarray(target_weights(rows, self.eos, packed=False)) > 0
            counts += np.bincount(rows[:, 1:][w], minlength=tok.vocab_size)
        return unigram_log_probs(counts)

    def _predict(self, params, batch, index):
        tokens = batch["text"]
        logits = self.apply(params, (tokens, None), "lm_logits")[:, :-1].astype(jnp.float32)
        targets = tokens[:, 1:]
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        return {"nll": nll, "correct": logits.argmax(-1) == targets, "targets": targets,
                "weights": target_weights(tokens, self.eos, packed=False)}

    def run(self, params):
        if self.unigram is None:
            self.unigram = self._unigram()
        out = self.map_split(self._predict, params, self.batch_spec)
        w = out["weights"] > 0
        return {"perplexity": float(np.exp(np.mean(np.float64(out["nll"][w])))),
                "accuracy": float(np.mean(out["correct"][w])),
                "unigram_perplexity": float(np.exp(-np.mean(self.unigram[out["targets"][w]]))),
                "tokens": int(w.sum())}
