"""Classification: a linear head on one tower's pooled features, or on the fused first token of
an (image, text) pair (fine-tuning; VQA-style with the answers as classes)."""

import jax
import numpy as np
import optax

from mmjax import flops
from mmjax.nn import options
from mmjax.nn.classifier import Classifier, FusedClassifier
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task
from mmjax.tasks.itm import ClipItm, fused_text_forward   # the fused model clip+itm builds


@TASKS.register("classify")
class Classify(Task):
    """`model.classify.tower` ('image' | 'text' | 'fusion') + a zero-initialised linear head
    over `model.classify.num_classes`; softmax cross-entropy on the dataset's labels. Text is
    cut to `model.classify.text_length` tokens (0: the tower's whole context_length, which may
    be a pretrained model's 512 positions). 'fusion' reads (image, text) pairs through the
    model clip+itm builds from `model.fusion` (its params under 'fusion/', nn/classifier.py)."""

    def _text_length(self):
        m = self.config.model
        return m.classify.get("text_length", 0) or m.text.context_length

    def _tower(self):
        tower = self.config.model.classify.tower
        if tower not in ("image", "text", "fusion"):
            raise ValueError(f"model.classify.tower={tower!r}; valid: 'image', 'text', 'fusion'")
        return tower

    def _keys(self):
        """The batch keys the model reads, in its argument order."""
        return ("image", "text") if self._tower() == "fusion" else (self._tower(),)

    def build_model(self):
        m, tower = self.config.model, self._tower()
        if tower == "fusion":
            return FusedClassifier(m.classify.num_classes, ClipItm(self.config, self.tokenizer).build_model(),
                                   param_dtype=np.dtype(m.param_dtype))
        opts = options.from_config(m, tower, self.tokenizer)   # text: the tokenizer's eot_id
        module = {"image": ViT, "text": TextTransformer}[tower](opts)
        return Classifier(m.classify.num_classes, param_dtype=np.dtype(m.param_dtype), **{tower: module})

    def batch_spec(self):
        d = self.config.data
        shapes = {"image": jax.ShapeDtypeStruct((d.image_size, d.image_size, d.image_channels), np.float32),
                  "text": jax.ShapeDtypeStruct((self._text_length(),), np.int32)}
        return {**{k: shapes[k] for k in self._keys()}, "label": jax.ShapeDtypeStruct((), np.int32)}

    def init_args(self, batch_size=1):
        batch = self.example_batch(batch_size)
        return "__call__", tuple(batch[k] for k in self._keys())

    def loss_terms(self, model, mesh):
        keys = self._keys()

        def cross_entropy(params, batch, rng):
            logits = model.apply({"params": params}, *(batch[k] for k in keys)).astype(np.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, {"accuracy": (logits.argmax(-1) == batch["label"]).mean()}

        return {"classify": ExampleTerm(cross_entropy)}

    def default_evals(self):
        return {"classify": dict(type="classify", dataset=self.train_datasets()[0])}

    def train_flops(self):
        m, d, b = self.config.model, self.config.data, self.config.train.batch_size
        if self._tower() == "fusion":   # the ViT, the fused text tower read at its first token
            i, t = m.image, m.text
            n_img = (d.image_size // i.patch_size) ** 2 + (i.pool == "cls")
            forward = (flops.encoder_forward(b, n_img, i.width, i.mlp_dim, i.depth)
                       + fused_text_forward(b, self._text_length(), t, n_img, i.width,
                                            1 if flops.prunes(m) else None))
            return 3 * (forward + 2 * b * t.width * m.classify.num_classes)
        if self._tower() == "text":
            t = m.text
            forward = flops.encoder_forward(b, self._text_length(), t.width, t.mlp_dim, t.depth,
                                            flops.text_pooled_rows(t, flops.prunes(m)))
            return 3 * (forward + 2 * b * t.width * m.classify.num_classes)
        i = m.image
        patches = (d.image_size // i.patch_size) ** 2
        forward = flops.encoder_forward(b, patches + (i.pool == "cls"), i.width, i.mlp_dim, i.depth,
                                        flops.image_pooled_rows(i, flops.prunes(m)))
        patch_embed = 2 * b * patches * i.patch_size ** 2 * d.image_channels * i.width
        return 3 * (forward + 2 * b * i.width * m.classify.num_classes) + 2 * patch_embed
