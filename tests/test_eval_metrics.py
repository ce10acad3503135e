"""Evaluator metrics against hand counts and plain numpy."""

import numpy as np
import pytest

from mmjax.eval.mlm import perplexity
from mmjax.eval.zeroshot import classification_metrics


def test_zeroshot_top1_top5_and_mean_per_class_recall_by_hand():
    # 7 classes along the axes; 4 images: class 0 (right), class 0 (its label 3rd best),
    # class 1 (right), class 2 (its label 7th, last).
    classes = np.eye(7)
    images = np.array([[1.0, 0, 0, 0, 0, 0, 0],
                       [0.5, 0.9, 0, 0.7, 0, 0, 0],
                       [0, 1.0, 0, 0, 0, 0, 0],
                       [0.1, 0.2, -1.0, 0.3, 0.4, 0.5, 0.6]])
    labels = np.array([0, 0, 1, 2])
    got = classification_metrics(images, labels, classes)
    assert got["top1"] == pytest.approx(2 / 4)
    assert got["top5"] == pytest.approx(3 / 4)
    # recall: class 0 1/2, class 1 1/1, class 2 0/1 -> mean 1/2 (top1 is 2/4 by chance too:
    # weight the classes unequally to tell the two apart)
    assert got["mean_per_class_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    more = classification_metrics(images[[0, 0, 1, 2, 3]], labels[[0, 0, 1, 2, 3]], classes)
    assert more["top1"] == pytest.approx(3 / 5)
    assert more["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_perplexity_is_exp_mean_nll_over_real_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 11))
    labels = rng.integers(0, 11, size=(3, 4))
    weights = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = -np.log(np.take_along_axis(probs, labels[..., None], -1)[..., 0])
    expected = np.exp(sum(nll[i, j] for i in range(3) for j in range(4) if weights[i, j]) / 7)
    assert perplexity(nll, weights) == pytest.approx(expected)
    uniform = np.full((3, 4), np.log(11.0))
    assert perplexity(uniform, weights) == pytest.approx(11.0)
