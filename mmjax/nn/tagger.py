"""A token-classification head on every position of the text tower's hidden states (NER)."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.init import logical
from mmjax.nn.text import TextTransformer


class Tagger(nn.Module):
    """Tokens [b, l] -> tag logits [b, l, num_tags]: a linear layer on each final hidden state.

    The tower keeps its name ('text'), so a BERT run's or an imported checkpoint's tower loads
    into it by name (`config.init`); the new head is 'tagger', zero-initialised."""

    num_tags: int
    text: TextTransformer
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        # The tag axis is not sharded: a tag set (5 for BIO PER / LOC) need not divide 'tensor'.
        head = nn.Dense(self.num_tags, name="tagger", param_dtype=self.param_dtype,
                        kernel_init=logical(nn.initializers.zeros, ("embed", None)),
                        bias_init=logical(nn.initializers.zeros, (None,)))
        return head(self.text.features(tokens))
