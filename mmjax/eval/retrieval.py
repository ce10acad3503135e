"""Image <-> text retrieval recall@K over a held-out set of (image, caption) pairs."""

import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator


def recall_at_k(image_embeddings, text_embeddings, captions, ks=(1, 5)):
    """Recall@K both ways; `captions[i]` is image i's caption.

    A retrieved item counts as correct when its caption string equals the query's: captions
    that are word-for-word the same cannot be told apart by any model (the built-in digits
    share ten captions), so identical ones are one answer. With unique captions this is the
    usual pair-index recall.
    """
    captions = np.asarray(captions, dtype=object)
    same = captions[:, None] == captions[None, :]           # [n images, n texts]
    sims = image_embeddings @ text_embeddings.T
    out = {}
    for k in ks:
        i2t = np.argsort(-sims, axis=1)[:, :k]                # texts for each image
        t2i = np.argsort(-sims.T, axis=1)[:, :k]              # images for each text
        out[f"i2t_r{k}"] = float(np.mean(np.take_along_axis(same, i2t, axis=1).any(axis=1)))
        out[f"t2i_r{k}"] = float(np.mean(np.take_along_axis(same.T, t2i, axis=1).any(axis=1)))
    return out


@EVALUATORS.register("retrieval")
class Retrieval(Evaluator):
    """Recall@1/5 image -> text and text -> image over a split of (image, caption) pairs;
    captions are told apart by their tokens."""

    needs = ("encode_image", "encode_text")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.batch_spec = {k: v for k, v in run_setup.task.batch_spec().items() if k in ("image", "text")}

    def _encode(self, params, batch, index):
        return {"zimg": self.apply(params, (batch["image"],), "encode_image"),
                "ztxt": self.apply(params, (batch["text"],), "encode_text"), "text": batch["text"]}

    def run(self, params):
        out = self.map_split(self._encode, params, self.batch_spec)
        captions = [row.tobytes() for row in out["text"]]
        return recall_at_k(out["zimg"], out["ztxt"], captions, ks=tuple(self.spec.get("ks", (1, 5))))
