"""Single-stream fusion encoder (VisualBERT / ViLT): one transformer over [image tokens; text tokens].

The ViT's tokens (class + patches, after its final norm) are projected to the text width and
get a learned position table of their own ('image_pos') and modality 0; the text tokens are
the text tower's input embeddings (its token table, positions and type, so the MLM head
stays tied to that table) plus modality 1. `fusion_opts.depth` blocks of the text tower's
kind run bidirectionally over the joint sequence with the text padding masked (every image
token is real). Under rotary text positions the image rows are not rotated (angle 0).
The ITM head reads the first text token (row n_img: [CLS] / the start token), the MLM head
the masked text rows, both through nn/fusion.py.
"""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.fusion import FusedDualEncoder
from mmjax.nn.init import logical, normal_init
from mmjax.nn.options import EncoderOptions
from mmjax.nn.transformer import Encoder, dense, layer_norm


class ConcatFusion(nn.Module):
    """(image tokens [b, n, c], text embeddings [b, l, e], text padding mask [b, l],
    text rotary angles [l, d/2] or None, text rows `select` [b, m]) -> [b, m, e] (select
    None: every text row, [b, l, e]).

    x = [image_tokens W + b + image_pos + type[0]; text + type[1]], [b, n + l, e]; a post-LN
    stack norms x first ('ln_embed', BERT's embedding norm), a pre-LN stack its output
    ('ln_final'); the blocks read the rows n + select."""

    opts: EncoderOptions

    @nn.compact
    def __call__(self, image_tokens, text, text_mask, rope, select):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        b, n, c = image_tokens.shape
        e = text.shape[-1]
        image = dense(e, ("embed", "mlp"), o.dtype, o.param_dtype, "image_in", c ** -0.5)(
            nn.with_logical_constraint(image_tokens, ("batch", "image_length", "activation_embed")))
        pos = self.param("image_pos", logical(normal_init(0.01), ("image_length", "embed")), (n, e),
                         o.param_dtype)
        types = self.param("type_embed", logical(normal_init(0.02), (None, "embed")), (2, e),
                           o.param_dtype).astype(o.dtype)
        x = jnp.concatenate([image + pos.astype(o.dtype) + types[0], text.astype(o.dtype) + types[1]],
                            axis=1)                                          # [b, n + l, e]
        x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))
        if not o.pre_norm:
            x = layer_norm(o.norm_eps, name="ln_embed", **kw)(x)
        mask = jnp.concatenate([jnp.ones((b, n), bool), text_mask], axis=1)
        if rope is not None:
            rope = jnp.concatenate([jnp.zeros((n,) + rope.shape[1:], rope.dtype), rope])
        x = Encoder(o, name="encoder")(x, mask, None if select is None else select + n, rope)
        if o.pre_norm:
            x = layer_norm(o.norm_eps, name="ln_final", **kw)(x)
        return x if select is not None else x[:, n:]


class ConcatDualEncoder(FusedDualEncoder):
    """FusedDualEncoder (same methods) whose fused pass is `ConcatFusion` ('fusion' params,
    `fusion_opts`: its blocks, bidirectional) over the ViT's tokens and the text embeddings."""

    def setup(self):
        super().setup()
        self.fusion = ConcatFusion(self.fusion_opts)

    def fused(self, image_tokens, tokens, select):
        text, rope = self.text.embed(tokens)                    # [b, l, e], [l, d/2] or None
        return self.fusion(image_tokens, text, tokens != self.text.opts.pad_id, rope, select)
