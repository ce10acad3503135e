"""Fusion encoder in ALBEF's layout: a stack of fusion blocks of its own on top of the text tower.

The text tower is the contrastive tower, unchanged (its own causality and pooling); the fused
pass runs it whole, then `fusion_opts.depth` blocks (self-attention over the text rows,
cross-attention to the image tokens, MLP; bidirectional, padding masked) read its hidden
states. The ITM and MLM heads read the stack's output (nn/fusion.py); the MLM head stays tied
to the text tower's token table.
"""

import flax.linen as nn

from mmjax.nn.fusion import FusedDualEncoder
from mmjax.nn.options import EncoderOptions
from mmjax.nn.transformer import Encoder, layer_norm


class FusionStack(nn.Module):
    """Text states [b, l, e] + image tokens [b, n_img, c] -> [b, l | m, e] (rows `select` [b, m]).

    Each block: self-attention (padding keys masked), cross-attention to the image tokens,
    MLP (nn/transformer.py Block with a context); pre-LN blocks end in a LayerNorm
    ('ln_final'), post-LN ones are normed already."""

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, padding_mask, image_tokens, select=None):
        o = self.opts
        x = Encoder(o, name="encoder")(x, padding_mask, select, context=image_tokens)
        if o.pre_norm:
            x = layer_norm(o.norm_eps, o.dtype, o.param_dtype, name="ln_final")(x)
        return x


class AlbefDualEncoder(FusedDualEncoder):
    """FusedDualEncoder (same methods) whose fused pass is the text tower, then `FusionStack`
    ('fusion' params, `fusion_opts`: its blocks, bidirectional)."""

    def setup(self):
        super().setup()
        self.fusion = FusionStack(self.fusion_opts)

    def fused(self, image_tokens, tokens, select):
        hidden = self.text.features(tokens)                      # [b, l, e]: the contrastive tower's
        return self.fusion(hidden, tokens != self.text.opts.pad_id, image_tokens, select)
