"""BERT-style pre-training models: text encoder + MLM head tied to the word embeddings (+ NSP)."""

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


class NspHead(nn.Module):
    """[CLS] features [b, e] -> BERT's pooler (dense + tanh) -> 2 logits [b, 2]: index 0 "B
    follows A", 1 "B is random" (transformers' `seq_relationship` order)."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, cls_features):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = cls_features.shape[-1]
        pooled = jnp.tanh(nn.Dense(width, name="pooler", **kw,
                                   kernel_init=logical(normal_init(0.02), ("embed", "mlp")),
                                   bias_init=logical(nn.initializers.zeros, ("mlp",)))(cls_features))
        return nn.Dense(2, name="nsp", **kw,
                        kernel_init=logical(normal_init(0.02), ("mlp", None)),
                        bias_init=logical(nn.initializers.zeros, (None,)))(pooled)


class BertPreTraining(nn.Module):
    """BERT's two pre-training heads on one pass (transformers' `BertForPreTraining`):
    pair rows [b, l], positions to predict [b, m], segment ids [b, l] -> (MLM logits
    [b, m, vocab], NSP logits [b, 2]). The last layer runs at [CLS] and the m positions only."""

    text: TextTransformer
    head: MlmHead
    nsp_head: NspHead

    def __call__(self, tokens, positions, token_types=None):
        select = jnp.concatenate([jnp.zeros_like(positions[:, :1]), positions], axis=1)
        hidden = self.text.at_positions(tokens, select, token_types)     # [b, 1 + m, e]
        return (self.head(hidden[:, 1:], self.text.word_embeddings()),
                self.nsp_head(hidden[:, 0]))

    def mlm_logits(self, tokens, positions, token_types=None):
        """Vocabulary logits [b, m, vocab] at `positions` (the name every MLM model shares)."""
        hidden = self.text.at_positions(tokens, positions, token_types)
        return self.head(hidden, self.text.word_embeddings())

    def nsp_logits(self, tokens, token_types):
        """Next-sentence logits [b, 2] of pair rows (the last layer at [CLS] only)."""
        select = jnp.zeros((tokens.shape[0], 1), jnp.int32)
        return self.nsp_head(self.text.at_positions(tokens, select, token_types)[:, 0])

    def encode(self, tokens, token_types=None):
        """Sequence features [b, l, e]."""
        return self.text(tokens, token_types)[1]
