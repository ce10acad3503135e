"""ELECTRA: a small MLM generator and a discriminator sharing one embedding table (Clark et al. 2020).

The discriminator is a BERT text tower (`text/...`, the names hf_bert reads) with a per-token
head: dense + activation + dense to one logit, transformers' ElectraDiscriminatorPredictions.
The generator reads the discriminator's embeddings (token, position and type tables and their
LayerNorm: shared, width E = the discriminator's width), projects them to its own narrower
width (`generator/embeddings_project`, present when the widths differ, as in transformers'
ElectraModel with embedding_size != hidden_size), runs its own encoder, and predicts the
masked tokens with ElectraGeneratorPredictions' layout: dense to E, GELU (erf, whatever the
encoder's activation), LayerNorm, then the transposed token table + a bias.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn import positions as positions_lib
from mmjax.nn.bert import tied_decoder
from mmjax.nn.init import logical, normal_init
from mmjax.nn.options import TextOptions
from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import ACTIVATIONS, Encoder, dense, layer_norm


def generator_sizes(model_config) -> dict:
    """{width, depth, num_heads, mlp_dim} of the generator: `model.rtd.generator_*`, each 0
    meaning derived from the discriminator (`model.text`): a quarter of its width (ELECTRA's
    recommended 1/4-1/2), its head width (so width // that many heads, at least 1), its MLP
    ratio, its depth."""
    t, r = model_config.text, model_config.rtd
    width = r.generator_width or max(1, t.width // 4)
    heads = r.generator_heads or max(1, width // (t.width // t.num_heads))
    return {"width": width, "depth": r.generator_depth or t.depth, "num_heads": heads,
            "mlp_dim": r.generator_mlp_dim or max(1, t.mlp_dim * width // t.width)}


class GeneratorHead(nn.Module):
    """Generator hidden states at the masked slots [b, m, g] -> vocabulary logits [b, m, v]:
    dense to the embedding width E, GELU, LayerNorm, transposed token table [v, E] + bias."""

    norm_eps: float = 1e-12
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, word_embeddings):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = word_embeddings.shape[1]
        h = dense(width, ("mlp", "embed"), name="transform", stddev=h.shape[-1] ** -0.5, **kw)(h)
        h = layer_norm(self.norm_eps, name="ln", **kw)(ACTIVATIONS["gelu"](h))
        bias = self.param("output_bias", logical(nn.initializers.zeros, ("vocab",)),
                          (word_embeddings.shape[0],), self.param_dtype)
        return tied_decoder(h, word_embeddings.astype(self.dtype), bias.astype(self.dtype))


class Generator(nn.Module):
    """Shared embeddings [b, l, E] -> MLM logits at `positions` [b, m] -> [b, m, v]."""

    opts: TextOptions   # the generator's: width, depth, num_heads, mlp_dim its own

    @nn.compact
    def __call__(self, embedded, padding_mask, positions, word_embeddings):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        x = embedded
        if o.width != x.shape[-1]:
            x = dense(o.width, ("embed", "mlp"), name="embeddings_project",
                      stddev=x.shape[-1] ** -0.5, **kw)(x)
        rope = None
        if o.position == "rotary":
            rope = positions_lib.rotary_1d(x.shape[1], o.width // o.num_heads, o.rope_base)
        h = Encoder(o, name="encoder")(x, padding_mask, positions, rope)   # [b, m, g]
        return GeneratorHead(o.norm_eps, name="head", **kw)(h, word_embeddings)


class DiscriminatorHead(nn.Module):
    """Hidden states [b, l, e] -> one replaced-token logit per position [b, l]."""

    activation: str = "gelu"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = h.shape[-1]
        h = ACTIVATIONS[self.activation](
            dense(width, ("embed", "mlp"), name="dense", stddev=width ** -0.5, **kw)(h))
        return dense(1, ("mlp", None), name="prediction", stddev=width ** -0.5, **kw)(h)[..., 0]


def build(text_opts: TextOptions, sizes: dict) -> "Electra":
    """The model of a discriminator tower's options and the generator's `generator_sizes`."""
    return Electra(TextTransformer(text_opts),
                   Generator(dataclasses.replace(text_opts, **sizes)),
                   DiscriminatorHead(text_opts.activation, text_opts.dtype, text_opts.param_dtype))


class Electra(nn.Module):
    """Generator logits at masked slots and discriminator logits at every position."""

    text: TextTransformer          # the discriminator's tower; its embeddings are shared
    generator: Generator
    discriminator_head: DiscriminatorHead

    def __call__(self, tokens, positions, token_types=None):
        """(generator logits [b, m, v], discriminator logits [b, l]): touches every param."""
        return (self.generator_logits(tokens, positions, token_types),
                self.discriminator_logits(tokens, token_types))

    def generator_logits(self, tokens, positions, token_types=None):
        """Vocabulary logits [b, m, v] at `positions` [b, m] of (masked) tokens [b, l]."""
        embedded, _ = self.text.embed(tokens, token_types)
        return self.generator(embedded, tokens != self.text.opts.pad_id, positions,
                              self.text.word_embeddings())

    def mlm_logits(self, tokens, positions, token_types=None):
        """The generator's: the name every MLM-capable model shares (the `mlm` evaluator)."""
        return self.generator_logits(tokens, positions, token_types)

    def discriminator_logits(self, tokens, token_types=None):
        """Logits [b, l] that each token was replaced (> 0: replaced)."""
        return self.discriminator_head(self.text(tokens, token_types)[1])

    def encode(self, tokens, token_types=None):
        """The discriminator's sequence features [b, l, e] (what ELECTRA fine-tunes)."""
        return self.text(tokens, token_types)[1]
