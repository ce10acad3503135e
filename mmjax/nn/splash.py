"""Splash attention: the Pallas TPU flash-attention kernel, sharded over the mesh with shard_map.

`model.attention='splash'` (or 'auto' on a TPU from `model.splash_min_length` keys on) runs
`jax.experimental.pallas.ops.tpu.splash_attention`: scores are computed a block of
[block, block] at a time and never held as [heads, l, l], forward and backward, so memory
grows with l instead of l². Masks reach the kernel without an [l, l] array: causality is the
kernel's own `CausalMask`, padding and packed documents are segment ids (a query sees a key
only where their ids are equal):

  padding    bool [b, l] (True at real keys) -> query ids all 1, key ids 1 real / 0 padding
  documents  int  [b, l] (nn.lm.document_ids) -> the same ids for queries and keys

A pair mask [b, l, l] has no segment form: pass document ids instead. The kernel runs per
example on [heads, l, head_dim] (vmapped over the local batch) inside `jax.shard_map` with
the batch split as the rules table splits 'batch' (data x fsdp) and the heads as 'heads'
(tensor). Off TPU (CPU) it runs in Pallas' interpret mode: exact, slow, for tests.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

LANES = 128                 # the kernel's blocks are multiples of this: l must be too
BLOCKS = (512, 256, 128)    # the largest that divides l is used (MaxText's default is 512)


def platform() -> str:
    """The platform attention compiles for: the devices of the mesh in context (a TPU
    topology compiled for ahead of time on a CPU host, `mmjax compile`), else JAX's default."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return jax.default_backend() if device is None else device.platform


def fits(length: int) -> bool:
    """Whether the kernel takes sequences of `length` rows (a multiple of 128)."""
    return length % LANES == 0


def choose(backend: str, length: int, min_length: int) -> str:
    """'auto' becomes 'splash' on TPU for sequences of at least `min_length` (0: never) rows
    the kernel takes; any other choice stays as it is."""
    if (backend == "auto" and min_length and length >= min_length and fits(length)
            and platform() == "tpu"):
        return "splash"
    return backend


def segment_ids(mask, batch: int, length: int):
    """(query ids, key ids) int32 [b, l] for a padding mask bool [b, l], document ids int
    [b, l], or None (no segments: (None, None))."""
    if mask is None:
        return None, None
    if mask.shape != (batch, length):
        raise ValueError(f"splash attention takes a padding mask or document ids of shape "
                         f"[batch, length] = {(batch, length)}, not {mask.shape}: pass document "
                         f"ids (nn.lm.document_ids) instead of a pair mask")
    if mask.dtype == jnp.bool_:
        return jnp.ones(mask.shape, jnp.int32), mask.astype(jnp.int32)
    return mask.astype(jnp.int32), mask.astype(jnp.int32)


def block_sizes(length: int):
    """The same block edge for every kernel (forward, dq, dkv): the largest of BLOCKS that
    divides `length`."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa   # Lazy: Pallas, ~0.5 s
    b = next(b for b in BLOCKS if length % b == 0)
    return sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                         block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)


def kernel(length: int, heads: int, causal: bool, interpret: bool):
    """The splash kernel for [heads, length, d] queries and keys (its block tables are
    computed in numpy, once per shape: the kernel module caches them)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa
    one = sa.CausalMask((length, length)) if causal else sa.FullMask((length, length))
    return sa.make_splash_mha(sa.MultiHeadMask([one] * heads), head_shards=1, q_seq_shards=1,
                              block_sizes=block_sizes(length), interpret=interpret)


def splash_attention(q, k, v, mask=None, causal=False):
    """Softmax attention of q [b, l, h, d] over k, v [b, l, h, d] -> [b, l, h, d], with the
    mask of `segment_ids` (padding [b, l] bool, document ids [b, l] int, or None) and
    causality; the same as nn.attention.dot_product_attention's einsum form."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa
    where = platform()
    if where not in ("tpu", "cpu"):
        raise ValueError(f"model.attention='splash' is the TPU kernel, not for {where}: use "
                         f"'auto' (or 'cudnn' on GPU)")
    b, length = q.shape[:2]
    if not fits(length) or k.shape[1] != length:
        raise ValueError(f"splash attention needs self-attention over a multiple of {LANES} "
                         f"rows, got {length} queries and {k.shape[1]} keys: set "
                         f"context_length to a multiple of {LANES} or model.attention='xla'")
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    q_ids, kv_ids = segment_ids(mask, b, length)

    def local(q, k, v, q_ids, kv_ids):   # this shard: [b', l, h', d], ids [b', l]
        run = kernel(length, q.shape[2], causal, where != "tpu")
        heads_first = lambda x: jnp.swapaxes(x, 0, 1)   # noqa: E731  [l, h, d] <-> [h, l, d]

        def one(q, k, v, q_ids, kv_ids):
            ids = None if q_ids is None else sa.SegmentIds(q=q_ids, kv=kv_ids)
            return heads_first(run(heads_first(q), heads_first(k), heads_first(v), segment_ids=ids))
        return jax.vmap(one)(q, k, v, q_ids, kv_ids)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, q_ids, kv_ids)
    qkv = nn.logical_to_mesh_axes(("batch", None, "heads", None))
    ids = P(qkv[0], None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, ids, ids), out_specs=qkv,
                         check_vma=False)(q, k, v, q_ids, kv_ids)
