"""CLIP-style dual encoder: image and text towers trained with a global-batch contrastive loss."""

import functools

import jax
import numpy as np

from mmjax import flops
from mmjax.losses import global_contrastive_loss
from mmjax.nn import options
from mmjax.nn.clip import DualEncoder
from mmjax.nn.vit import ViT
from mmjax.nn.text import TextTransformer
from mmjax.sharding import BATCH_AXES
from mmjax.tasks import TASKS
from mmjax.tasks.base import BatchTerm, Task


@TASKS.register("clip")
class Clip(Task):
    """InfoNCE (`model.contrastive_loss='infonce'`) or SigLIP's sigmoid loss over the global batch."""

    unit = "pairs"

    def build_model(self, mlm_head=None):
        m = self.config.model
        return DualEncoder(ViT(options.from_config(m, "image")),
                           TextTransformer(options.from_config(m, "text", self.tokenizer)), m.embed_dim,
                           init_logit_bias=m.get("init_logit_bias"), mlm_head=mlm_head,
                           project_image=m.get("image_proj", True),
                           param_dtype=np.dtype(m.param_dtype))

    def image_shape(self):
        d = self.config.data
        return (d.image_size, d.image_size, d.image_channels)

    def batch_spec(self):
        length = self.config.model.text.context_length
        return {"image": jax.ShapeDtypeStruct(self.image_shape(), np.float32),
                "text": jax.ShapeDtypeStruct((length,), np.int32)}

    def init_args(self, batch_size=1):
        batch = self.example_batch(batch_size)
        return "__call__", (batch["image"], batch["text"])

    def loss_terms(self, model, mesh):
        def embed(params, batch):
            zimg, ztxt, scale, bias = model.apply({"params": params}, batch["image"], batch["text"])
            return (zimg, ztxt), (scale, bias)

        contrastive = functools.partial(global_contrastive_loss, self.config.model.contrastive_loss,
                                        mesh=mesh, batch_axes=BATCH_AXES)

        def loss(per_example, shared):
            (zimg, ztxt), (scale, bias) = per_example, shared
            return contrastive(zimg, ztxt, scale, bias), {"logit_scale": scale}

        return {"contrastive": BatchTerm(embed, loss)}

    def default_evals(self):
        dataset = self.train_datasets()[0]
        return {"zeroshot": dict(type="zeroshot", dataset=dataset),
                "retrieval": dict(type="retrieval", dataset=dataset)}

    def train_flops(self):
        m, d = self.config.model, self.config.data
        return flops.clip_train_flops(self.config.train.batch_size, m.image, m.text, d.image_size,
                                      d.image_channels, m.embed_dim, flops.prunes(m))
