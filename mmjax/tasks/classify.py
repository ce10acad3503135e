"""Classification on one tower: a linear head on pooled image or text features (fine-tuning)."""

import jax
import numpy as np
import optax

from mmjax import flops
from mmjax.nn import options
from mmjax.nn.classifier import Classifier
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task


@TASKS.register("classify")
class Classify(Task):
    """`model.classify.tower` ('image' | 'text') + a zero-initialised linear head over
    `model.classify.num_classes`; softmax cross-entropy on the dataset's labels. Text is cut
    to `model.classify.text_length` tokens (0: the tower's whole context_length, which may be
    a pretrained model's 512 positions)."""

    def _text_length(self):
        m = self.config.model
        return m.classify.get("text_length", 0) or m.text.context_length

    def _tower(self):
        tower = self.config.model.classify.tower
        if tower not in ("image", "text"):
            raise ValueError(f"model.classify.tower={tower!r}; valid: 'image', 'text'")
        return tower

    def build_model(self):
        m, tower = self.config.model, self._tower()
        opts = options.from_config(m, tower, self.tokenizer)   # text: the tokenizer's eot_id
        module = {"image": ViT, "text": TextTransformer}[tower](opts)
        return Classifier(m.classify.num_classes, param_dtype=np.dtype(m.param_dtype), **{tower: module})

    def batch_spec(self):
        d, m = self.config.data, self.config.model
        inputs = (jax.ShapeDtypeStruct((d.image_size, d.image_size, d.image_channels), np.float32)
                  if self._tower() == "image" else
                  jax.ShapeDtypeStruct((self._text_length(),), np.int32))
        return {self._tower(): inputs, "label": jax.ShapeDtypeStruct((), np.int32)}

    def init_args(self, batch_size=1):
        return "__call__", (self.example_batch(batch_size)[self._tower()],)

    def loss_terms(self, model, mesh):
        key = self._tower()

        def cross_entropy(params, batch, rng):
            logits = model.apply({"params": params}, batch[key]).astype(np.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, {"accuracy": (logits.argmax(-1) == batch["label"]).mean()}

        return {"classify": ExampleTerm(cross_entropy)}

    def default_evals(self):
        return {"classify": dict(type="classify", dataset=self.train_datasets()[0])}

    def train_flops(self):
        m, d, b = self.config.model, self.config.data, self.config.train.batch_size
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
