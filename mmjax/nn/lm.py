"""Causal language model: the causal text tower + a vocabulary head, tied to the token table or not."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.text import TextTransformer


def document_ids(tokens, eos_id: int):
    """[b, l] int32: which packed document each token belongs to. A document ends with its
    `eos_id` token (the end-of-document token belongs to the document it closes); numpy:
    `np.cumsum(tokens == eos_id, axis=1) - (tokens == eos_id)`."""
    ends = (tokens == eos_id).astype(jnp.int32)
    return jnp.cumsum(ends, axis=1) - ends


def document_mask(tokens, eos_id: int):
    """[b, l, l] bool: query row i may see key j only within its own document (causality is
    the attention's own)."""
    doc = document_ids(tokens, eos_id)
    return doc[:, :, None] == doc[:, None, :]


class CausalLM(nn.Module):
    """Tokens [b, l] -> next-token logits [b, l, vocab] (row i predicts token i + 1).

    tie_embeddings: logits = h @ token_tableᵀ (GPT-2); else a separate [width, vocab] kernel.
    Neither has a bias (GPT-2's head has none). `hidden` and `head` are the two halves, for a
    loss that runs the head a chunk of rows at a time.
    """

    text: TextTransformer
    tie_embeddings: bool = True

    def setup(self):
        if not self.tie_embeddings:
            o = self.text.opts
            self.lm_head = self.param("lm_head", logical(normal_init(o.width ** -0.5), ("embed", "vocab")),
                                      (o.width, o.vocab_size), o.param_dtype)

    def __call__(self, tokens, mask=None):
        """mask: the documents of packed rows, ids [b, l] (`document_ids`) or pairs [b, l, l]
        (`document_mask`); None: one sequence a row."""
        return self.head(self.hidden(tokens, mask))

    def hidden(self, tokens, mask=None):
        """The final hidden states [b, l, width]."""
        return self.text.features(tokens, mask=mask)

    def head(self, h):
        """Hidden states [..., width] -> vocabulary logits [..., vocab]."""
        if self.tie_embeddings:
            return jnp.einsum("...e,ve->...v", h, self.text.word_embeddings().astype(h.dtype))
        return jnp.einsum("...e,ev->...v", h, self.lm_head.astype(h.dtype))

    def lm_logits(self, tokens, mask=None):
        """The same as calling the model: the name every causal-LM-capable model shares."""
        return self(tokens, mask)
