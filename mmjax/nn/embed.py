"""Token and token-type lookups whose gradient accumulates in the parameters' dtype.

Flax's `nn.Embed` casts the whole table to the compute dtype and then gathers, so under
bfloat16 compute its gradient is a bfloat16 scatter-add: every occurrence of a token adds
into that token's row in bfloat16. That sum is lossy (32k bfloat16 additions into one
type-embedding row), and GPUs have no bfloat16 atomic add: the scatter becomes
compare-and-swap loops that serialise on repeated rows. Measured on an H200
(`python -m benchmarks.profile_step configs/bench_bert_base.py`): BERT-base's 2-row
token-type table took 150 ms and the 30,522-row token table 56 ms of a 285 ms step.

`Embed` keeps flax's parameter (`embedding`, same init, same `attend`) and gathers rows from
the table as stored, casting the rows afterwards (the same forward values: the cast is
elementwise), so the gradient is a scatter-add in the parameters' dtype. Tables of at most
`ONE_HOT_ROWS` rows (token types) are read as a one-hot product instead: their gradient is a
matmul reduction in the parameters' dtype, with no scatter at all, deterministic on every backend.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

ONE_HOT_ROWS = 16


class Embed(nn.Embed):
    """nn.Embed (ids [...] -> [..., features]) whose lookup casts after gathering."""

    def __call__(self, inputs):
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("Embed: ids must be integers")
        dtype = self.dtype or self.embedding.dtype
        if self.num_embeddings <= ONE_HOT_ROWS:
            one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=self.embedding.dtype)
            return jnp.einsum("...r,rf->...f", one_hot, self.embedding).astype(dtype)   # [..., f]
        return jnp.take(self.embedding, inputs, axis=0).astype(dtype)
