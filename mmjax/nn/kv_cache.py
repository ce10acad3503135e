"""The key-value cache of a decoder: explicit arrays [layers, b, L, heads, head_dim], named for sharding."""

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

# Logical axis names (mmjax.sharding.RULES): the batch over data x fsdp, the heads over tensor.
AXES = ("layers", "batch", "length", "heads", "kv")


class KVCache(NamedTuple):
    """Keys and values of every layer at every row written so far: k, v [layers, b, L, h, d].
    Row p of sequence i holds token p's (prompt and generated tokens alike)."""

    k: jnp.ndarray
    v: jnp.ndarray

    @classmethod
    def zeros(cls, depth, batch, length, num_heads, head_dim, dtype=jnp.float32):
        shape = (depth, batch, length, num_heads, head_dim)
        return cls(*(constrain(jnp.zeros(shape, dtype)) for _ in "kv"))

    @property
    def length(self) -> int:
        return self.k.shape[2]


def constrain(x):
    """x [layers, b, L, h, d] (or one layer's [b, L, h, d]) sharded by its logical names
    under the rules in force (none: as it is)."""
    return nn.with_logical_constraint(x, AXES[5 - x.ndim:])


def write_cache(cache, k, v):
    """(k_cache, v_cache [b, L, h, d], start [b]) and one call's k, v [b, n, h, d] ->
    (k_cache, v_cache with rows start .. start + n - 1 replaced by k, v; the query positions
    start + 0..n-1 [b, n]). A select per slot, no scatter: it splits over the batch and heads
    like the cache itself."""
    k_cache, v_cache, start = cache
    n, length = k.shape[1], k_cache.shape[1]
    offset = jnp.arange(length)[None, :] - start[:, None]                     # [b, L]
    new = ((offset >= 0) & (offset < n))[:, :, None, None]
    index = jnp.clip(offset, 0, n - 1)[:, :, None, None]

    def put(old, rows):
        return constrain(jnp.where(new, jnp.take_along_axis(rows, index, axis=1).astype(old.dtype), old))

    return put(k_cache, k), put(v_cache, v), start[:, None] + jnp.arange(n)[None, :]
