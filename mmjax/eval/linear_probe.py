"""Linear probe and few-shot classification of frozen image embeddings (`linear_probe`)."""

import jax
import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval import linear_models
from mmjax.eval.base import Evaluator

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FEWSHOT_L2 = 2.0 ** 10   # big_vision's fewshot_lsr default (configs/common_fewshot.py)


@EVALUATORS.register("linear_probe")
class LinearProbe(Evaluator):
    """Logistic-regression probe and few-shot ridge on the `encode_image` embeddings.

    Entry: {"type": "linear_probe", "dataset": ..., "split": "test", "train_split": "train"}.
    Both splits are encoded with the frozen model. The probes fit on at most
    `max_train_examples` (default 50,000) train embeddings: all of them when the split is no
    larger, else a random subset drawn with the entry's `seed` (the same at every evaluation;
    not the split's first rows, which may hold few classes when a split is sorted by label).

    The held-out part and the few-shot samples are drawn by example index and seed (the
    rows come ordered by index), so the metrics do not depend on the process count.

    Linear probe (CLIP's protocol, with a held-out part of train for the sweep): multinomial
    logistic regression with bias, mean cross-entropy + l2 / 2 ||w||^2 on embeddings
    standardised with the train mean / std, fitted by full-batch L-BFGS on device. Each l2 of
    `l2_grid` is fitted on train minus a seeded held-out `val_fraction` (0.2) and scored on
    it; the best is refitted on all of train and scored on `split`: `top1`, `top5` (more than
    5 classes), `l2` (the chosen strength).

    Few-shot (big_vision's fewshot_lsr): for each k of `shots` (1, 5, 10, 25) and each of
    `seeds` (3) seeds, k train examples per class, ridge regression to {-1, 1} one-hot
    targets (standardised features, constant bias feature, l2 `fewshot_l2` = 1024) in closed
    form: `fewshot_{k}shot_top1`, the mean top-1 on `split` over the seeds.
    """

    needs = ("encode_image",)

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.train_split = self.spec.get("train_split", "train")
        self.max_train_examples = int(self.spec.get("max_train_examples", 50_000))
        self.l2_grid = tuple(float(v) for v in self.spec.get("l2_grid", DEFAULT_L2_GRID))
        self.val_fraction = float(self.spec.get("val_fraction", 0.2))
        self.max_iter = int(self.spec.get("max_iter", 300))
        self.shots = tuple(int(k) for k in self.spec.get("shots", (1, 5, 10, 25)))
        self.seeds = int(self.spec.get("seeds", 3))
        self.fewshot_l2 = float(self.spec.get("fewshot_l2", FEWSHOT_L2))
        self.seed = int(self.spec.get("seed") or 0)
        self.batch_spec = {k: v for k, v in run_setup.task.batch_spec().items() if k == "image"}
        self.batch_spec["label"] = jax.ShapeDtypeStruct((), np.int32)

    def _encode_images(self, params, batch, index):
        return {"z": self.apply(params, (batch["image"],), "encode_image"), "label": batch["label"]}

    def features(self, params, split, limit=None):
        """(embeddings [n, d] float32, labels [n] int32, example ids [n]) of a split in the
        order of its examples' indices, or of `subset(len(split), limit, seed)` of its rows
        when a limit is given: only those rows are read and encoded (a streamed dataset is
        encoded whole, then subset)."""
        if limit is None or not self.dataset.random_access:
            out = self.map_split(self._encode_images, params, self.batch_spec, split=split)
            rows = subset(len(out["label"]), limit, self.seed)
            return np.float32(out["z"][rows]), np.int32(out["label"][rows]), out["_index"][rows]
        rows = subset(len(self.dataset.source(self.data_dir, split)), limit, self.seed)
        out = self.map_split(self._encode_images, params, self.batch_spec, split=split, rows=rows)
        return np.float32(out["z"]), np.int32(out["label"]), out["_index"]

    def num_classes(self, *label_arrays):
        """The dataset's class count, else the largest label seen + 1."""
        names = getattr(self.dataset, "class_names", None)
        return len(names) if names else int(max(a.max() for a in label_arrays)) + 1

    def run(self, params):
        train_z, train_y, train_ids = self.features(params, self.train_split,
                                                    self.max_train_examples)
        test_z, test_y, _ = self.features(params, self.spec["split"])
        return probe_metrics(train_z, train_y, test_z, test_y, train_ids=train_ids,
                             num_classes=self.num_classes(train_y, test_y), l2_grid=self.l2_grid,
                             val_fraction=self.val_fraction, max_iter=self.max_iter,
                             shots=self.shots, seeds=[(self.seed, s) for s in range(self.seeds)],
                             fewshot_l2=self.fewshot_l2, seed=self.seed)


def subset(n, limit, seed):
    """Ascending indices of min(n, limit) of n rows: all, or a random `limit` drawn by seed."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def probe_metrics(train_z, train_y, test_z, test_y, *, num_classes, l2_grid, val_fraction,
                  max_iter, shots, seeds, fewshot_l2, seed, train_ids=None) -> dict:
    """The evaluator's metrics from train / test embeddings [n, d] / [m, d] and labels; the
    held-out rows and few-shot samples are drawn by the train rows' example ids `train_ids`
    (default 0 .. n-1) and the seeds, whatever order the rows come in."""
    logits, best_l2, _ = linear_models.logistic_probe(
        train_z, train_y, test_z, num_classes=num_classes, l2_grid=l2_grid,
        val_fraction=val_fraction, seed=seed, max_iter=max_iter, train_ids=train_ids)
    metrics = {"top1": linear_models.topk_accuracy(logits, test_y, 1), "l2": best_l2}
    if num_classes > 5:
        metrics["top5"] = linear_models.topk_accuracy(logits, test_y, 5)
    fewshot = linear_models.fewshot_top1(train_z, train_y, test_z, test_y, shots=shots,
                                         seeds=seeds, l2=fewshot_l2, num_classes=num_classes,
                                         train_ids=train_ids)
    return metrics | {f"fewshot_{k}shot_top1": v for k, v in fewshot.items()}
