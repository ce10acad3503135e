"""BERT-style masked language model: text encoder + MLM head tied to the word embeddings."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.masking import gather_positions
from mmjax.nn.init import logical, normal_init
from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import ACTIVATIONS, layer_norm


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
        return jnp.einsum("bme,ve->bmv", h, word_embeddings.astype(self.dtype)) + bias.astype(self.dtype)


class BertMlm(nn.Module):
    """Masked tokens [b, l] + positions to predict [b, m] -> logits [b, m, vocab]."""

    text: TextTransformer
    head: MlmHead

    def __call__(self, tokens, positions, token_types=None):
        _, sequence = self.text(tokens, token_types)
        return self.head(gather_positions(sequence, positions), self.text.word_embeddings())

    def encode(self, tokens, token_types=None):
        """Sequence features [b, l, e] (for sentence embeddings and parity tests)."""
        return self.text(tokens, token_types)[1]
