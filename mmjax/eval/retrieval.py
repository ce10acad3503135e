"""Image <-> text retrieval recall@K where an image may have several captions (COCO's five):
from records of one image and its captions, or from (image, caption) rows, where rows showing
the same image are one image."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.errors import ConfigError
from mmjax.eval import EVALUATORS, nearest
from mmjax.eval.base import Evaluator, serves
from mmjax.eval.itm import itm_probabilities


def recall_at_k(image_embeddings, text_embeddings, image_of_text, captions, ks=(1, 5),
                rerank=None, rerank_k=0):
    """Recall@K both ways over *distinct* captions.

    image_embeddings [n_images, d], text_embeddings [n_texts, d]; `image_of_text[t]` is the
    index of text t's image and `captions[t]` its caption (text or token ids). Captions that
    are word-for-word the same cannot be told apart by any model (the built-in digits' 1,000
    test captions are 10 sentences, one per digit), so they are one caption, embedded as its
    first text:
    - image -> text: the gallery is the distinct captions; an image query is right at K when
      any of its distinct captions is among the top K (equal rows no longer fill the top K);
    - text -> image: each distinct caption queries the images and is right at K when an image
      it is a caption of is among the top K; it counts as many times as it occurs.
    When every caption is different this is the standard protocol (CLIP, open_clip): a text
    is right when its own image is in the top K, an image when any of its own captions is.
    The similarities and top-K run on device in chunks; the host holds [n, K] indices only.
    With `rerank(pairs_i2t, pairs_t2i) -> (scores [n images, k], scores [n captions, k])`,
    ALBEF / BLIP's protocol: each query's top `rerank_k` from the embeddings, as (image,
    first text row of the caption) pairs, are re-ordered by those scores (an ITM head) and
    the recalls of that order come too, as `rerank_i2t_r1` etc.
    """
    image_of_text = np.asarray(image_of_text, np.int64)
    _, first, caption_id, count = np.unique(np.asarray(captions, dtype=object), return_index=True,
                                            return_inverse=True, return_counts=True)
    caption_id = caption_id.reshape(-1).astype(np.int64)
    n_ids = len(first)
    distinct = np.asarray(text_embeddings)[first]                   # [n captions, d], id order
    # (image, caption id) pairs that are relevant, as sorted codes image * n_ids + id.
    relevant = np.unique(image_of_text * n_ids + caption_id)
    top = max(max(ks), rerank_k if rerank else 0)
    i2t = np.array(nearest.top_k(image_embeddings, distinct, top))  # [n images, top] caption ids
    t2i = np.array(nearest.top_k(distinct, image_embeddings, top))  # [n captions, top] images
    out = _recalls(i2t, t2i, relevant, n_ids, count, ks)
    if rerank:
        k = rerank_k
        images = np.arange(len(i2t))[:, None]
        i2t_scores, t2i_scores = rerank(np.stack(np.broadcast_arrays(images, first[i2t[:, :k]]), -1),
                                        np.stack([t2i[:, :k], np.broadcast_to(first[:, None], (n_ids, k))], -1))
        i2t[:, :k] = np.take_along_axis(i2t[:, :k], np.argsort(-i2t_scores, axis=1, kind="stable"), 1)
        t2i[:, :k] = np.take_along_axis(t2i[:, :k], np.argsort(-t2i_scores, axis=1, kind="stable"), 1)
        out |= {f"rerank_{key}": v for key, v in _recalls(i2t, t2i, relevant, n_ids, count, ks).items()}
    return out


def _recalls(i2t, t2i, relevant, n_ids, count, ks):
    """recall_at_k's figures of the ranked lists i2t [n images, K] and t2i [n captions, K]."""
    i2t_hit = np.isin(np.arange(len(i2t))[:, None] * n_ids + i2t, relevant)
    t2i_hit = np.isin(t2i * n_ids + np.arange(n_ids)[:, None], relevant)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(np.mean(i2t_hit[:, :k].any(axis=1)))
        out[f"t2i_r{k}"] = float(count @ t2i_hit[:, :k].any(axis=1) / count.sum())
    return out


def image_identity(zimg_keys):
    """rows -> (index of each row's image among the unique images, first row of each image)."""
    _, first, inverse = np.unique(zimg_keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)                                 # images in order of first sight
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)], first[order]


@EVALUATORS.register("retrieval")
class Retrieval(Evaluator):
    """Recall@K (option `ks`, default 1, 5, 10) image -> text and text -> image.

    A dataset with a 'captions' feature (`mmjax data build --kind karpathy`: COCO, Flickr30k)
    holds one record per image with all its captions (at most option `max_captions`, default
    8); otherwise each (image, caption) row is one pair and rows with the same pixels are one
    image. Captions are told apart by their tokens; equal ones are one caption
    (`recall_at_k`). Option `rerank_k` (a fused model, e.g. task 'clip+itm'): each query's top
    K re-ordered by the ITM head (option `rerank_score`, see `_rerank`), reported next to the
    embeddings' recalls (`rerank_*`)."""

    needs = ("encode_image", "encode_text")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        task_spec = run_setup.task.batch_spec()
        self.rerank_k = int(self.spec.get("rerank_k", 0))
        if self.rerank_k and "itm_logits" not in serves(run_setup.model):
            raise ConfigError(f"retrieval option rerank_k={self.rerank_k} needs a fused model with "
                              f"an ITM head (task 'clip+itm'); task {run_setup.config.task!r} has "
                              f"none: drop rerank_k")
        self.per_image = "captions" in self.dataset.features
        self.batch_spec = {"image": task_spec["image"]}
        if self.per_image:
            length = task_spec["text"].shape[-1]
            self.max_captions = int(self.spec.get("max_captions", 8))
            self.batch_spec["captions"] = jax.ShapeDtypeStruct((self.max_captions, length), np.int32)
            self.batch_spec["n_captions"] = jax.ShapeDtypeStruct((), np.int32)
        else:
            self.batch_spec["text"] = task_spec["text"]
            # Two fixed random projections of the pixels identify an image (equal images,
            # equal keys): rows of the same image are one image.
            shape = self.batch_spec["image"].shape
            self._probe = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)

    def _zimg(self, params, images):
        """{'zimg'} (+ 'tokens', the image tokens, when re-ranking)."""
        if not self.rerank_k:
            return {"zimg": self.apply(params, (images,), "encode_image")}
        zimg, tokens = self.apply(params, (images,), "image_features")
        return {"zimg": zimg, "tokens": tokens}

    def _rerank(self, params, image_tokens, texts, zimg, ztxt):
        """recall_at_k's `rerank` score of (image index, text row) pairs [n, k, 2]: the ITM
        log-odds (option rerank_score='itm', ALBEF's), plus the embeddings' cosine similarity
        under 'itm+sim' (the default, BLIP's evaluation)."""
        kind = self.spec.get("rerank_score", "itm+sim")
        if kind not in ("itm", "itm+sim"):
            raise ConfigError(f"retrieval option rerank_score={kind!r} unknown; valid: 'itm', 'itm+sim'")

        def scores(pairs):
            flat = pairs.reshape(-1, 2)
            score = itm_probabilities(self, params, image_tokens[flat[:, 0]], texts[flat[:, 1]],
                                      log_odds=True)
            if kind == "itm+sim":
                score = score + np.einsum("nd,nd->n", zimg[flat[:, 0]], ztxt[flat[:, 1]])
            return score.reshape(pairs.shape[:2])
        return lambda i2t, t2i: (scores(i2t), scores(t2i))

    def _encode_rows(self, params, batch, index):
        key = jnp.einsum("bhwc,khwc->bk", batch["image"], self._probe)
        return self._zimg(params, batch["image"]) | {
                "ztxt": self.apply(params, (batch["text"],), "encode_text"), "text": batch["text"],
                "key": key}

    def _encode_images(self, params, batch, index):
        b, k, length = batch["captions"].shape
        ztxt = self.apply(params, (batch["captions"].reshape(b * k, length),), "encode_text")
        return self._zimg(params, batch["image"]) | {
                "ztxt": ztxt.reshape(b, k, -1), "captions": batch["captions"],
                "n_captions": batch["n_captions"]}

    def run(self, params):
        ks = tuple(self.spec.get("ks", (1, 5, 10)))
        if not self.per_image:
            out = self.map_split(self._encode_rows, params, self.batch_spec)
            image_of_text, first = image_identity(out["key"])
            captions = [row.tobytes() for row in out["text"]]
            rerank = self._rerank(params, out["tokens"][first], out["text"], out["zimg"][first],
                                  out["ztxt"]) if self.rerank_k else None
            return recall_at_k(out["zimg"][first], out["ztxt"], image_of_text, captions, ks=ks,
                               rerank=rerank, rerank_k=self.rerank_k)
        out = self.map_split(self._encode_images, params, self.batch_spec)
        n = out["n_captions"]
        if n.max(initial=0) > self.max_captions:
            raise ConfigError(f"retrieval: an image of {self.spec['dataset']!r} has {n.max()} "
                              f"captions; raise the entry's max_captions option to at least that")
        slot = np.arange(self.max_captions)[None, :] < n[:, None]        # [images, max_captions]
        image_of_text = np.nonzero(slot)[0]
        captions = [row.tobytes() for row in out["captions"][slot]]
        rerank = self._rerank(params, out["tokens"], out["captions"][slot], out["zimg"],
                              out["ztxt"][slot]) if self.rerank_k else None
        return recall_at_k(out["zimg"], out["ztxt"][slot], image_of_text, captions, ks=ks,
                           rerank=rerank, rerank_k=self.rerank_k)
