"""CLIP + captioning (CoCa's objective, BLIP's decoder layout): contrastive + caption next-token CE.

loss = contrastive + `model.caption.weight` × caption, each logged as a term. The caption
term: the ViT's tokens condition the causal text tower through cross-attention in every
block (nn/caption.py); row i of the caption predicts token i + 1, so the start token
predicts the first word and the end token is the last target; padding is never a target
(tasks/lm.py `target_weights`). An ExampleTerm: its mean is over the (micro)batch's targets.
"""

import numpy as np

from mmjax import flops
from mmjax.errors import ConfigError
from mmjax.losses import next_token_loss
from mmjax.nn import options
from mmjax.nn.caption import CaptionDualEncoder
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm
from mmjax.tasks.clip import Clip
from mmjax.tasks.itm import fused_text_forward
from mmjax.tasks.lm import end_id, target_weights


def caption_loss(logits, tokens, eos_id: int):
    """Next-token cross-entropy of logits [b, l, V] on captions tokens [b, l] (start, words,
    end, padding): the targets are tokens[:, 1:] up to and including each row's first
    `eos_id`. -> (loss, {'lm_accuracy', 'lm_count', 'lm_z'})."""
    return next_token_loss(logits, tokens, target_weights(tokens, eos_id, packed=False))


def caption_term(model, eos_id: int, weight: float):
    def fn(params, batch, rng):
        variables = {"params": params}
        image_tokens = model.apply(variables, batch["image"], method="image_features")[1]
        logits = model.apply(variables, image_tokens, batch["text"], method="caption_logits")
        loss, metrics = caption_loss(logits, batch["text"], eos_id)
        return loss, {"caption_accuracy": metrics["lm_accuracy"]}

    return ExampleTerm(fn, weight)


@TASKS.register("clip+caption")
class ClipCaption(Clip):
    """The dual encoder's contrastive loss + captioning through the causal text tower
    cross-attending to the image tokens (`model.caption`: weight, tie_embeddings)."""

    def build_model(self):
        m = self.config.model
        if not m.text.causal:
            raise ConfigError("task 'clip+caption' decodes captions left to right: set "
                             "model.text.causal=True")
        return CaptionDualEncoder(ViT(options.from_config(m, "image")),
                                  TextTransformer(options.from_config(m, "text", self.tokenizer)),
                                  m.embed_dim, init_logit_bias=m.get("init_logit_bias"),
                                  param_dtype=np.dtype(m.param_dtype),
                                  tie_embeddings=bool(m.caption.tie_embeddings))

    def init_args(self, batch_size=1):
        batch = self.example_batch(batch_size)
        return "init_all", (batch["image"], batch["text"])

    def loss_terms(self, model, mesh):
        return super().loss_terms(model, mesh) | {
            "caption": caption_term(model, end_id(self.tokenizer), self.config.model.caption.weight)}

    def default_evals(self):
        dataset = self.train_datasets()[0]
        return super().default_evals() | {"caption": dict(type="caption", dataset=dataset)}

    def train_flops(self):
        """CLIP's, plus the ViT again, the text tower with cross-attention at every row and
        the vocabulary head (3x: forward and backward)."""
        m, d = self.config.model, self.config.data
        b, length = self.config.train.batch_size, m.text.context_length
        n_img = (d.image_size // m.image.patch_size) ** 2 + (m.image.pool == "cls")
        head = 2 * b * length * m.text.width * m.text.vocab_size
        return super().train_flops() + 3 * (
            flops.encoder_forward(b, n_img, m.image.width, m.image.mlp_dim, m.image.depth)
            + fused_text_forward(b, length, m.text, n_img, m.image.width) + head)
