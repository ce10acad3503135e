"""Captioner in BLIP's decoder layout: a dual encoder whose causal text tower reads the image tokens.

One set of text weights serves both passes (as nn/fusion.py's encoder does): run alone (no
context) the tower is the contrastive one; given the ViT's tokens, every block adds
cross-attention to them (nn/transformer.py Block) and the pass stays causal, so row i of
the caption predicts token i + 1 through a vocabulary head tied to the token table (or its
own kernel). Cached generation walks the same params (nn/decode.py, mmjax/generate.py).
"""

import jax.numpy as jnp

from mmjax.nn.clip import DualEncoder, l2_normalize
from mmjax.nn.init import logical, normal_init


class CaptionDualEncoder(DualEncoder):
    """DualEncoder (`__call__`, `encode_image`, `encode_text` as there) plus the caption pass:

    - `image_features(images)` -> (zimg [b, d], image tokens [b, n_img, w_img]) from one ViT pass;
    - `caption_logits(image_tokens, tokens)` -> [b, l, vocab]: row i predicts token i + 1;
    - `head(hidden)`: hidden states [..., width] -> vocabulary logits [..., vocab] (the
      decoder's, read by nn/decode.py);
    - `caption(images, tokens)` -> [b, l, vocab], the two above from the pixels.
    """

    tie_embeddings: bool = True

    def setup(self):
        super().setup()
        if not self.tie_embeddings:
            o = self.text.opts
            self.lm_head = self.param("lm_head", logical(normal_init(o.width ** -0.5), ("embed", "vocab")),
                                      (o.width, o.vocab_size), o.param_dtype)

    @property
    def serves(self) -> tuple:
        return ("encode_image", "encode_text", "image_features", "caption_logits", "head", "caption")

    def image_features(self, images):
        pooled, tokens = self.image(images, all_tokens=True)
        return l2_normalize(self.image_proj(pooled)), tokens

    def head(self, h):
        if self.tie_embeddings:
            return jnp.einsum("...e,ve->...v", h, self.text.word_embeddings().astype(h.dtype))
        return jnp.einsum("...e,ev->...v", h, self.lm_head.astype(h.dtype))

    def caption_logits(self, image_tokens, tokens):
        return self.head(self.text.fused(tokens, image_tokens, causal=True))

    def caption(self, images, tokens):
        return self.caption_logits(self.image_features(images)[1], tokens)

    def init_all(self, images, tokens):
        """Touches every parameter: the caption pass first (it creates the cross-attention)."""
        logits = self.caption(images, tokens)
        return self(images, tokens), logits
