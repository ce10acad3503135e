"""BERT-style masked language model: text encoder + MLM head tied to the word embeddings."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import ACTIVATIONS, layer_norm


@jax.custom_vjp
def tied_decoder(h, table, bias):
    """Vocabulary logits h [b, m, e] @ table [v, e]ᵀ + bias [v] -> [b, m, v].

    The backward is written out as three matmuls (dh, dtable, and dbias as ones @ g): XLA's
    own bias gradient, a column reduction over [b·m, v], took as long as a matmul on CPU.
    """
    return jnp.einsum("bme,ve->bmv", h, table) + bias


def _tied_decoder_fwd(h, table, bias):
    return tied_decoder(h, table, bias), (h, table)


def _tied_decoder_bwd(residuals, g):
    h, table = residuals
    rows = g.reshape(-1, g.shape[-1])  # [b·m, v]
    return (jnp.einsum("bmv,ve->bme", g, table), rows.T @ h.reshape(-1, h.shape[-1]),
            jnp.ones(rows.shape[0], rows.dtype) @ rows)


tied_decoder.defvjp(_tied_decoder_fwd, _tied_decoder_bwd)


class MlmHead(nn.Module):
    """Hidden states at the masked positions [b, m, e] -> vocabulary logits [b, m, v].

    dense + activation + LayerNorm, then the transposed word-embedding table + output bias.
    """

    activation: str = "gelu"
    norm_eps: float = 1e-12
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, word_embeddings):  # word_embeddings: [v, e]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = h.shape[-1]
        h = nn.Dense(width, name="transform", **kw,
                     kernel_init=logical(normal_init(width ** -0.5), ("embed", "mlp")),
                     bias_init=logical(nn.initializers.zeros, ("mlp",)))(h)
        h = layer_norm(self.norm_eps, name="ln", **kw)(ACTIVATIONS[self.activation](h))
        bias = self.param("output_bias", logical(nn.initializers.zeros, ("vocab",)),
                          (word_embeddings.shape[0],), self.param_dtype)
        return tied_decoder(h, word_embeddings.astype(self.dtype), bias.astype(self.dtype))


class BertMlm(nn.Module):
    """Masked tokens [b, l] + positions to predict [b, m] -> logits [b, m, vocab]."""

    text: TextTransformer
    head: MlmHead

    def __call__(self, tokens, positions, token_types=None):
        hidden = self.text.at_positions(tokens, positions, token_types)   # [b, m, e]
        return self.head(hidden, self.text.word_embeddings())

    def mlm_logits(self, tokens, positions, token_types=None):
        """The same as calling the model: the name every MLM-capable model shares."""
        return self(tokens, positions, token_types)

    def encode(self, tokens, token_types=None):
        """Sequence features [b, l, e] (for sentence embeddings and parity tests)."""
        return self.text(tokens, token_types)[1]
