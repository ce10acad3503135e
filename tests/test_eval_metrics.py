"""Evaluator metrics against hand counts and plain numpy."""

import numpy as np
import pytest

from mmjax.eval.mlm import perplexity
from mmjax.eval.retrieval import image_identity, recall_at_k
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
    """Recall@K both ways, brute force, one query at a time (float64), over distinct captions
    as retrieval.py documents it. A query's rank is the number of candidates scoring strictly
    above its best-scoring correct one; it is right at K when the rank is below K. An image
    query's candidates are the distinct captions (each scored as the first text reading it),
    correct are the image's own; every text row is a query (so a caption counts as often as
    it occurs), its candidates the images, correct every image with a caption that reads the
    same."""
    zimg, ztxt = np.float64(image_embeddings), np.float64(text_embeddings)
    first_text, images_with = {}, {}          # caption -> its first text; -> the images it captions
    for text, (image, caption) in enumerate(zip(image_of_text, captions)):
        first_text.setdefault(caption, text)
        images_with.setdefault(caption, set()).add(int(image))
    gallery = list(first_text)
    gallery_z = ztxt[[first_text[c] for c in gallery]]

    def right_at(scores, correct):
        rank = int(np.sum(scores > scores[sorted(correct)].max()))
        return [rank < k for k in ks]

    i2t = [right_at(gallery_z @ zimg[i], [g for g, c in enumerate(gallery) if i in images_with[c]])
           for i in range(len(zimg))]
    t2i = [right_at(zimg @ ztxt[first_text[c]], images_with[c]) for c in captions]
    out = {}
    for j, k in enumerate(ks):
        out[f"i2t_r{k}"] = sum(row[j] for row in i2t) / len(i2t)
        out[f"t2i_r{k}"] = sum(row[j] for row in t2i) / len(t2i)
    return out


def own_caption_recall(image_embeddings, text_embeddings, image_of_text, ks):
    """The standard protocol (CLIP, open_clip's retrieval eval) from a full similarity matrix
    sorted best first: a text is right at K when its own image is in its top K, an image when
    one of its own texts is. Only for texts that are all different."""
    sims = np.float64(image_embeddings) @ np.float64(text_embeddings).T         # [images, texts]
    own = np.arange(len(sims))[:, None] == np.asarray(image_of_text)[None, :]
    i2t, t2i = np.argsort(-sims, axis=1), np.argsort(-sims.T, axis=1)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = np.mean([own[i, i2t[i, :k]].any() for i in range(len(sims))])
        out[f"t2i_r{k}"] = np.mean([own[t2i[t, :k], t].any() for t in range(sims.shape[1])])
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


def test_retrieval_rows_with_unique_captions_follow_the_standard_own_caption_protocol():
    """(image, caption) rows in shuffled order, 1-3 rows per image, every caption different:
    image_identity + recall_at_k (the evaluator's row path) score what the standard
    protocol's numpy (own_caption_recall) does on the true images."""
    rng = np.random.default_rng(1)
    images, keys = rng.normal(size=(20, 8)), rng.normal(size=(20, 2))
    true_image = rng.permutation(np.repeat(np.arange(20), rng.integers(1, 4, 20)))
    texts = images[true_image] + rng.normal(scale=1.2, size=(len(true_image), 8))
    captions = [f"caption {n}" for n in range(len(true_image))]
    image_of_text, first = image_identity(keys[true_image])
    ks = (1, 3, 5, 10)
    got = recall_at_k(np.float32(images[true_image][first]), np.float32(texts), image_of_text,
                      captions, ks=ks)
    want = own_caption_recall(images, texts, true_image, ks)
    assert 0 < want["i2t_r1"] < want["i2t_r5"] < 1 and 0 < want["t2i_r1"] < want["t2i_r5"] < 1
    assert got == pytest.approx(want, abs=1e-12)


def test_retrieval_on_template_captions_ranks_distinct_captions():
    """Images of 4 classes, each with one caption from 3 templates x 4 classes (12 distinct
    captions, 5-9 rows each, equal captions equal embeddings): an image query ranks the 12
    distinct captions, so R@1 < R@5 (counting rows, the 5+ copies of the best caption filled
    every top 5 and R@1 = R@5); text queries count each caption as often as it occurs."""
    rng = np.random.default_rng(2)
    classes, templates = rng.normal(size=(4, 8)), rng.normal(size=(3, 8))
    pairs = [(c, t) for c in range(4) for t in range(3)]
    rows = rng.permutation(np.repeat(np.arange(12), rng.integers(5, 10, 12)))
    captions = [f"template {pairs[r][1]} says {pairs[r][0]}" for r in rows]
    caption_z = np.stack([classes[c] + 0.6 * templates[t] for c, t in pairs])
    images = caption_z[rows] + rng.normal(scale=0.7, size=(len(rows), 8))
    texts = caption_z[rows]
    ks = (1, 2, 5)
    got = recall_at_k(np.float32(images), np.float32(texts), np.arange(len(rows)), captions, ks=ks)
    want = recall_by_rank(images, texts, np.arange(len(rows)), captions, ks)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got["i2t_r1"] < got["i2t_r5"] and 0 < got["t2i_r1"] < 1
