"""CLIP-style dual encoder: image and text towers, projections, learnable logit scale (and bias)."""

import math

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.bert import MlmHead
from mmjax.nn.init import logical, normal_init
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT


def l2_normalize(x, eps=1e-6):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class DualEncoder(nn.Module):
    """(images [b, H, W, C], tokens [b, l]) -> (zimg [b, d], ztxt [b, d], scale, bias).

    Embeddings are L2-normalised float32; scale = exp(logit_scale) clamped at `max_scale`
    (initialised to 1/0.07); bias is the learnable SigLIP bias (0 when `logit_bias` is None).
    With `mlm_head`, `mlm_logits` predicts masked caption tokens from the same text tower.
    """

    image: ViT
    text: TextTransformer
    embed_dim: int
    init_logit_scale: float = math.log(1 / 0.07)
    max_scale: float = 100.0
    init_logit_bias: float | None = None
    mlm_head: MlmHead | None = None
    project_image: bool = True       # False: the pooled image features are the embedding (SigLIP)
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        def projection(width):
            return nn.Dense(self.embed_dim, use_bias=False, param_dtype=self.param_dtype,
                            kernel_init=logical(normal_init(width ** -0.5), ("embed", "mlp")))

        if self.project_image:
            self.image_proj = projection(self.image.opts.width)
        elif self.image.opts.width != self.embed_dim:
            raise ValueError(f"model.image_proj=False needs model.embed_dim ({self.embed_dim}) = "
                             f"model.image.width ({self.image.opts.width}): no projection maps one to the other")
        self.text_proj = projection(self.text.opts.width)
        self.logit_scale = self.param("logit_scale", logical(nn.initializers.constant(self.init_logit_scale), ()),
                                      (), jnp.float32)
        if self.init_logit_bias is not None:
            self.logit_bias = self.param("logit_bias", logical(nn.initializers.constant(self.init_logit_bias), ()),
                                         (), jnp.float32)

    @property
    def serves(self) -> tuple:
        """The methods this model can run (evaluators check what they need against it)."""
        return ("encode_image", "encode_text") + (("mlm_logits",) if self.mlm_head else ())

    def encode_image(self, images):
        pooled = self.image(images)
        return l2_normalize(self.image_proj(pooled) if self.project_image else pooled)

    def encode_text(self, tokens):
        return l2_normalize(self.text_proj(self.text.pooled(tokens)))

    def __call__(self, images, tokens):
        scale = jnp.minimum(jnp.exp(self.logit_scale), self.max_scale)
        bias = self.logit_bias if self.init_logit_bias is not None else jnp.zeros((), jnp.float32)
        return self.encode_image(images), self.encode_text(tokens), scale, bias

    def mlm_logits(self, tokens, positions):
        hidden = self.text.at_positions(tokens, positions)   # [b, m, e]
        return self.mlm_head(hidden, self.text.word_embeddings())

    def init_all(self, images, tokens, positions):
        """Touches every parameter (used once, to initialise)."""
        out = self(images, tokens)
        return out if self.mlm_head is None else (out, self.mlm_logits(tokens, positions))
