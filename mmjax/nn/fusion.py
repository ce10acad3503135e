"""Fusion encoder in BLIP's layout: a dual encoder whose text blocks can cross-attend to the image tokens.

The base of the other layouts too (nn/fusion_albef.py, nn/fusion_concat.py): they replace
`fused`, the hidden states of the fused pass; the heads and methods here serve all three.

One set of text weights serves both passes: run alone (no context) the text tower is the
contrastive tower; given the ViT's tokens, every block adds cross-attention to them
(nn/transformer.py Block, nn/cross_attention.py) and attends bidirectionally, and a 2-way
head on the fused first token says whether the caption matches the image (ITM).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.clip import DualEncoder, l2_normalize
from mmjax.nn.init import logical, normal_init
from mmjax.nn.options import EncoderOptions


class FusedDualEncoder(DualEncoder):
    """DualEncoder (`__call__`, `encode_image`, `encode_text` as there) plus the fused pass:

    - `image_features(images)` -> (zimg [b, d], image tokens [b, n_img, w_img]) from one ViT pass;
    - `fused_features(image_tokens, tokens)` -> [b, width] the fused first token (what the
      ITM head and a fine-tuned classifier, nn/classifier.py FusedClassifier, read);
    - `itm_logits(image_tokens, tokens)` -> [b, 2] (index 1: "matches");
    - `fused_mlm_logits(image_tokens, tokens, positions)` -> [b, m, vocab], the MLM head tied
      to the token table reading the fused hidden states at `positions` [b, m];
    - `match(images, tokens)` -> [b] the ITM probability that each pair matches.

    `fusion_opts`: the blocks of a fusion stack of its own (ALBEF's, the single stream's);
    unused in BLIP's layout, whose fused pass is the text tower with cross-attention.
    """

    fusion_opts: EncoderOptions | None = None

    def setup(self):
        super().setup()
        width = self.text.opts.width
        self.itm_head = nn.Dense(2, param_dtype=self.param_dtype, name="itm_head",
                                 kernel_init=logical(normal_init(width ** -0.5), ("embed", None)),
                                 bias_init=logical(nn.initializers.zeros, (None,)))

    @property
    def serves(self) -> tuple:
        return ("encode_image", "encode_text", "image_features", "fused_features", "itm_logits",
                "match") + (
            ("fused_mlm_logits",) if self.mlm_head else ())

    def scale(self):
        """The contrastive logit scale (as `__call__` returns it)."""
        return jnp.minimum(jnp.exp(self.logit_scale), self.max_scale)

    def image_features(self, images):
        pooled, tokens = self.image(images, all_tokens=True)
        return l2_normalize(self.image_proj(pooled)), tokens

    def fused(self, image_tokens, tokens, select):
        """The fused pass's hidden states [b, n, width] at text positions `select` [b, n]."""
        return self.text.fused(tokens, image_tokens, select=select)

    def fused_features(self, image_tokens, tokens):
        """[b, width] the fused first token: what the ITM head (and a fused classifier) reads."""
        first = jnp.zeros((tokens.shape[0], 1), jnp.int32)
        return self.fused(image_tokens, tokens, first)[:, 0]

    def itm_logits(self, image_tokens, tokens):
        return self.itm_head(self.fused_features(image_tokens, tokens)).astype(jnp.float32)

    def fused_mlm_logits(self, image_tokens, tokens, positions):
        hidden = self.fused(image_tokens, tokens, positions)    # [b, m, e]
        return self.mlm_head(hidden, self.text.word_embeddings())

    def match(self, images, tokens):
        return jax.nn.softmax(self.itm_logits(self.image_features(images)[1], tokens))[:, 1]

    def init_all(self, images, tokens, positions=None):
        """Touches every parameter: the fused pass first (it creates the cross-attention)."""
        image_tokens = self.image_features(images)[1]
        out = [self.itm_logits(image_tokens, tokens)]
        if self.mlm_head is not None:
            out.append(self.fused_mlm_logits(image_tokens, tokens, positions))
        return self(images, tokens), out
