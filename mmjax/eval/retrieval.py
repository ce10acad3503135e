"""Image <-> text retrieval recall@K over a held-out split of (image, caption) rows, where an
image may have several captions (COCO's five): rows showing the same image are one image."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator


def recall_at_k(image_embeddings, text_embeddings, image_of_text, captions, ks=(1, 5)):
    """Recall@K both ways, counted the standard way: a text query is right when its own image
    is among the top K images; an image query when any of its captions is among the top K
    texts.

    image_embeddings [n_images, d], text_embeddings [n_texts, d]; `image_of_text[t]` is the
    index of text t's image and `captions[t]` its caption. Captions that are word-for-word
    the same cannot be told apart by any model (the built-in digits share ten), so a text
    identical to one of an image's captions counts as that image's caption too.
    """
    captions = np.asarray(captions, dtype=object)
    image_of_text = np.asarray(image_of_text)
    n_images = len(image_embeddings)
    # relevant[i, t]: text t is (word for word) a caption of image i.
    _, caption_id = np.unique(captions, return_inverse=True)
    has = np.zeros((n_images, caption_id.max() + 1), bool)
    has[image_of_text, caption_id] = True
    relevant = has[:, caption_id]                            # [n images, n texts]
    sims = image_embeddings @ text_embeddings.T
    out = {}
    for k in ks:
        i2t = np.argsort(-sims, axis=1)[:, :k]                # texts for each image
        t2i = np.argsort(-sims.T, axis=1)[:, :k]              # images for each text
        out[f"i2t_r{k}"] = float(np.mean(np.take_along_axis(relevant, i2t, axis=1).any(axis=1)))
        out[f"t2i_r{k}"] = float(np.mean(np.take_along_axis(relevant.T, t2i, axis=1).any(axis=1)))
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
    """Recall@1/5 image -> text and text -> image over a split of (image, caption) rows; rows
    with the same image (several captions) are one image, captions are told apart by their
    tokens."""

    needs = ("encode_image", "encode_text")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.batch_spec = {k: v for k, v in run_setup.task.batch_spec().items() if k in ("image", "text")}
        shape = self.batch_spec["image"].shape
        # Two fixed random projections of the pixels identify an image (equal images, equal keys).
        self._probe = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)

    def _encode(self, params, batch, index):
        key = jnp.einsum("bhwc,khwc->bk", batch["image"], self._probe)
        return {"zimg": self.apply(params, (batch["image"],), "encode_image"),
                "ztxt": self.apply(params, (batch["text"],), "encode_text"), "text": batch["text"],
                "key": key}

    def run(self, params):
        out = self.map_split(self._encode, params, self.batch_spec)
        image_of_text, first = image_identity(out["key"])
        captions = [row.tobytes() for row in out["text"]]
        return recall_at_k(out["zimg"][first], out["ztxt"], image_of_text, captions,
                           ks=tuple(self.spec.get("ks", (1, 5))))
