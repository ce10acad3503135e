"""Zero-shot classification: class prompts -> text embeddings -> nearest class per image."""

import jax
import numpy as np

from mmjax.eval import EVALUATORS, nearest, prompts
from mmjax.eval.base import Evaluator


def class_embeddings(encode_text, tokenize, class_names, templates):
    """[classes, d]: per class, the L2-normalised mean of its prompts' (L2-normalised) text
    embeddings, computed once per evaluation."""
    z = np.asarray(encode_text(tokenize(prompts.prompts(class_names, templates))), np.float32)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    z = z.reshape(len(class_names), len(templates), -1).mean(axis=1)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def classification_metrics(image_embeddings, labels, classes):
    """top1; top5 (the label among the 5 most similar classes: 1.0 with 5 classes or fewer);
    mean per-class recall (top-1 recall averaged over the classes present, as reported for
    unbalanced sets). The similarities and the top-5 run on device, in chunks of images."""
    labels = np.asarray(labels)
    ranked = nearest.top_k(image_embeddings, classes, 5)
    hit1 = ranked[:, 0] == labels
    out = {"top1": float(np.mean(hit1)),
           "top5": float(np.mean((ranked == labels[:, None]).any(axis=1)))}
    present = np.unique(labels)
    out["mean_per_class_recall"] = float(np.mean([hit1[labels == c].mean() for c in present]))
    return out


@EVALUATORS.register("zeroshot")
class ZeroShot(Evaluator):
    """Top-1, top-5 and mean per-class recall of a labelled image split against prompts of
    its class names. Options: `class_names` (a file, one per line in label order, or a list;
    default: the dataset's), `templates` ('single', 'imagenet80' (the CLIP paper's 80), a file
    or a list; default: the dataset's caption templates, else 'single'). Prompts are
    lower-cased."""

    needs = ("encode_image", "encode_text")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.class_names = prompts.class_names(self.spec.get("class_names"),
                                               self.dataset.class_names, self.spec["dataset"])
        self.templates = prompts.templates(self.spec.get("templates"), self.dataset.templates)
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
