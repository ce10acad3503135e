"""Evaluator metrics against hand counts and plain numpy."""

import numpy as np
import pytest

from mmjax.eval.mlm import perplexity
from mmjax.eval.retrieval import recall_at_k
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


def recall_by_rank(image_embeddings, text_embeddings, image_of_text, captions, ks):
    """Recall@K both ways, brute force, one query at a time (float64). A query's rank is the
    number of candidates scoring strictly above its best-scoring correct one; it is right at K
    when the rank is below K. Correct, as retrieval.py documents it: for a text query its own
    image and every image with a caption that reads the same; for an image query every text
    that reads the same as one of the image's captions."""
    zimg, ztxt = np.float64(image_embeddings), np.float64(text_embeddings)
    texts_reading, images_with = {}, {}          # caption -> its texts; caption -> the images it is one of
    for text, (image, caption) in enumerate(zip(image_of_text, captions)):
        texts_reading.setdefault(caption, set()).add(text)
        images_with.setdefault(caption, set()).add(int(image))
    captions_of = {int(image): set() for image in image_of_text}
    for image, caption in zip(image_of_text, captions):
        captions_of[int(image)].add(caption)

    def right_at(scores, correct):
        rank = int(np.sum(scores > scores[sorted(correct)].max()))
        return [rank < k for k in ks]

    i2t = [right_at(ztxt @ zimg[i], set().union(*(texts_reading[c] for c in captions_of[i])))
           for i in range(len(zimg))]
    t2i = [right_at(zimg @ ztxt[t], images_with[captions[t]]) for t in range(len(ztxt))]
    out = {}
    for j, k in enumerate(ks):
        out[f"i2t_r{k}"] = sum(row[j] for row in i2t) / len(i2t)
        out[f"t2i_r{k}"] = sum(row[j] for row in t2i) / len(t2i)
    return out


def test_retrieval_recall_equals_a_brute_force_rank_per_query():
    """mmjax's recall_at_k on 15 images with 1-3 captions each, a quarter of the captions
    word for word another image's (equal captions, equal embeddings, as an encoder gives),
    against recall_by_rank."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(15, 6))
    image_of_text = np.repeat(np.arange(15), rng.integers(1, 4, 15))
    captions = [f"image {i} caption {n}" for n, i in enumerate(image_of_text)]
    for t in rng.choice(len(captions), len(captions) // 4, replace=False):
        captions[t] = captions[rng.integers(len(captions))]
    by_caption = {c: images[i] + rng.normal(scale=1.5, size=6) for i, c in zip(image_of_text, captions)}
    texts = np.stack([by_caption[c] for c in captions])
    ks = (1, 2, 5)
    got = recall_at_k(np.float32(images), np.float32(texts), image_of_text, captions, ks=ks)
    want = recall_by_rank(images, texts, image_of_text, captions, ks)
    assert 0 < want["i2t_r1"] < 1 and 0 < want["t2i_r1"] < 1     # neither trivial nor perfect
    assert got == pytest.approx(want, abs=1e-12)
