"""Zero-shot classification: class prompts -> text embeddings -> nearest class per image."""

import jax
import numpy as np

from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator


def class_embeddings(encode_text, tokenize, class_names, templates):
    """[classes, d]: per class, the L2-normalised mean of its prompts' text embeddings."""
    prompts = [t.format(name) for name in class_names for t in templates]
    z = np.asarray(encode_text(tokenize(prompts)), np.float32)
    z = z.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def classification_metrics(image_embeddings, labels, classes):
    """top1; top5 (the label among the 5 most similar classes: 1.0 with 5 classes or fewer);
    mean per-class recall (top-1 recall averaged over the classes present, as reported for
    unbalanced sets)."""
    labels = np.asarray(labels)
    scores = image_embeddings @ classes.T
    ranked = np.argsort(-scores, axis=-1)
    hit1 = ranked[:, 0] == labels
    out = {"top1": float(np.mean(hit1)),
           "top5": float(np.mean((ranked[:, :5] == labels[:, None]).any(axis=1)))}
    present = np.unique(labels)
    out["mean_per_class_recall"] = float(np.mean([hit1[labels == c].mean() for c in present]))
    return out


@EVALUATORS.register("zeroshot")
class ZeroShot(Evaluator):
    """Top-1 of a labelled image split against prompts of its class names (the dataset's own
    names and caption templates; options `class_names` / `templates` override them)."""

    needs = ("encode_image", "encode_text")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.class_names = tuple(self.spec.get("class_names") or self.dataset.class_names or ())
        self.templates = tuple(self.spec.get("templates") or self.dataset.templates or ("{}",))
        if not self.class_names:
            raise ValueError(f"zeroshot evaluator: dataset {self.spec['dataset']!r} has no class "
                             f"names; give them as the entry's class_names option")
        self.batch_spec = {k: v for k, v in run_setup.task.batch_spec().items() if k == "image"}
        self.batch_spec["label"] = jax.ShapeDtypeStruct((), np.int32)

    def _encode_images(self, params, batch, index):
        return {"z": self.apply(params, (batch["image"],), "encode_image"), "label": batch["label"]}

    def _encode_text(self, params, tokens):
        return self.apply(params, (tokens,), "encode_text")

    def run(self, params):
        length = self.setup.config.model.text.context_length
        classes = class_embeddings(lambda t: self.map_rows(self._encode_text, params, t),
                                   lambda s: self.setup.tokenizer.encode(s, length),
                                   self.class_names, self.templates)
        out = self.map_split(self._encode_images, params, self.batch_spec)
        return classification_metrics(out["z"], out["label"], classes)

