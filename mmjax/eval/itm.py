"""Image-text matching on held-out pairs: accuracy and ROC-AUC against hard and random negatives.

Each held-out (image, caption) row is a positive; its hard negative is the caption the dual
encoder ranks highest for the image among those that are not the image's own (a different
caption, and a different label where the dataset has labels); its random negative one such
caption drawn uniformly (option `seed`). The fused model's ITM probability scores the 3n pairs.
"""

import jax
import numpy as np

from mmjax import sharding
from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator


def roc_auc(positive, negative):
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney U / n m)."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks[order] = np.repeat(start + (counts + 1) / 2.0, counts)
    n, m = len(positive), len(negative)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def negatives(zimg, ztxt, same, rng):
    """(hard [n], random [n]) caption rows for each image row: the most similar allowed caption,
    and a uniform allowed one; same [n, n] True where caption j may not be a negative of i."""
    sim = np.where(same, -np.inf, zimg @ ztxt.T)
    hard = sim.argmax(axis=1)
    allowed = ~same
    random = np.array([rng.choice(np.flatnonzero(row)) for row in allowed])
    return hard, random


def itm_probabilities(evaluator, params, image_tokens, texts, log_odds=False):
    """ITM probabilities [n] (or their log-odds, logit 1 - logit 0) of image tokens
    [n, n_img, w] with texts [n, l] under an evaluator's model, in chunks split over the
    mesh's batch axes (every process holds the whole arrays)."""
    mesh = evaluator.setup.mesh
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    chunk = -(-max(evaluator.spec["batch_size"], shards) // shards) * shards

    def probability(params, tokens, texts):
        logits = evaluator.apply(params, (tokens, texts), "itm_logits")
        return logits[:, 1] - logits[:, 0] if log_odds else jax.nn.softmax(logits)[:, 1]

    fn = evaluator._jit(probability, key=("itm_probability", log_odds))
    out = []
    for start in range(0, len(texts), chunk):
        block = [a[start:start + chunk] for a in (image_tokens, texts)]
        pad = chunk - len(block[1])
        block = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in block]
        arrays = [jax.make_array_from_callback(a.shape, sharding.batch_sharding(mesh),
                                               lambda index, a=a: a[index]) for a in block]
        out.append(np.asarray(jax.device_get(fn(params, *arrays)))[:chunk - pad])
    return np.concatenate(out)


@EVALUATORS.register("itm")
class Itm(Evaluator):
    """`accuracy` (threshold 0.5) and `auc` against hard and against random negatives, and the
    positives' accuracy; the image tokens of the split are held on the host while scoring."""

    needs = ("image_features", "encode_text", "itm_logits")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        task_spec = run_setup.task.batch_spec()
        self.labelled = "label" in self.dataset.features
        self.batch_spec = {"image": task_spec["image"], "text": task_spec["text"]}
        if self.labelled:
            self.batch_spec["label"] = jax.ShapeDtypeStruct((), np.int32)

    def _encode(self, params, batch, index):
        zimg, tokens = self.apply(params, (batch["image"],), "image_features")
        out = {"zimg": zimg, "tokens": tokens, "text": batch["text"],
               "ztxt": self.apply(params, (batch["text"],), "encode_text")}
        return out | ({"label": batch["label"]} if self.labelled else {})

    def run(self, params):
        out = self.map_split(self._encode, params, self.batch_spec)
        text = out["text"]
        same = (text[:, None, :] == text[None, :, :]).all(axis=-1)
        if self.labelled:
            same |= out["label"][:, None] == out["label"][None, :]
        rng = np.random.default_rng(int(self.spec.get("seed", 0)))
        hard, random = negatives(out["zimg"], out["ztxt"], same, rng)
        tokens = out["tokens"]
        positive = itm_probabilities(self, params, tokens, text)
        metrics = {"positive_accuracy": float(np.mean(positive > 0.5))}
        for name, rows in (("hard", hard), ("random", random)):
            negative = itm_probabilities(self, params, tokens, text[rows])
            metrics[f"{name}_accuracy"] = float(np.mean(np.concatenate([positive > 0.5, negative <= 0.5])))
            metrics[f"{name}_auc"] = roc_auc(positive, negative)
        return metrics
