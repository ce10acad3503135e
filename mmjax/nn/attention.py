"""Multi-head attention: one function for every backend, one module with logical axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.kv_cache import write_cache
from mmjax.nn.linear import linear
from mmjax.nn.positions import rotate
from mmjax.nn.splash import choose, platform, splash_attention


def take_rows(x, positions):
    """x [b, l, ...] at positions [b, n] -> [b, n, ...]; positions None: x itself."""
    if positions is None:
        return x
    idx = positions.reshape(positions.shape + (1,) * (x.ndim - 2)).astype(jnp.int32)
    return jnp.take_along_axis(x, idx, axis=1)


def attention_mask(padding_mask, causal, q_positions, q_length, k_length):
    """Bool mask [b | 1, 1, q, k] of the allowed (query, key) pairs, or None when all are.

    padding_mask: [b, k], True at real keys; int [b, k], document ids (a query row sees the keys
    of its own document); or [b, l, k], True at the allowed (query row, key) pairs. causal: a
    query at position p sees keys <= p, its position being its row (q_positions None) or
    q_positions [b, q].
    """
    mask = None if padding_mask is None else _broadcast(padding_mask, q_positions)
    if causal:
        keys = jnp.arange(k_length)
        if q_positions is None:
            seen = jnp.arange(q_length)[:, None] >= keys                 # [q, k]
        else:
            seen = (q_positions[:, :, None] >= keys)[:, None]            # [b, 1, q, k]
        mask = seen if mask is None else mask & seen
    return mask


def _broadcast(padding_mask, q_positions=None):
    """padding_mask [b, k] -> [b, 1, 1, k]; a pair mask [b, l, k] or document ids int [b, l]
    -> [b, 1, q, k], its rows at q_positions [b, q] when given."""
    if jnp.issubdtype(padding_mask.dtype, jnp.integer):   # document ids
        return (take_rows(padding_mask, q_positions)[:, :, None] == padding_mask[:, None, :])[:, None]
    if padding_mask.ndim == 2:
        return padding_mask[:, None, None, :]
    return take_rows(padding_mask, q_positions)[:, None]


def gpu_flash(q, k, padding_mask, q_positions):
    """'cudnn' where cuDNN's flash attention takes the call in training, else None (XLA).

    jax.nn.dot_product_attention(implementation=None) runs XLA's attention on GPU, which
    materialises the scores: on an H200, a GPT-2-small LM step at 1,024 tokens ran 1.86x
    faster with cuDNN (benchmarks/README.md, "Results: GPU"). cuDNN's training kernels
    need 16-bit inputs, head size a multiple of 8 up to 128 and lengths that are multiples
    of 64 (a ViT's 197 tokens are not), and take a padding mask only as per-row lengths,
    which assume right padding: calls with a mask stay on XLA.
    """
    fits = (padding_mask is None and q_positions is None
            and q.dtype in (jnp.bfloat16, jnp.float16)
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128
            and q.shape[1] % 64 == 0 and k.shape[1] % 64 == 0)
    return "cudnn" if fits else None


def dot_product_attention(q, k, v, *, padding_mask=None, causal=False, q_positions=None,
                          backend="auto", splash_min_length=0):
    """Softmax attention of q [b, q, h, d] over k, v [b, l, h, d] -> [b, q, h, d].

    padding_mask: [b, l] bool, True where the key is a real token; [b, l] int, packed document
    ids (query row i sees key j when their ids are equal: a token never attends across
    documents, and no [l, l] mask is built on the splash path); or [b, l, l], True where
    query row i may see key j.
    q_positions: [b, q] int, the positions of the query rows among the keys (a pruned last
    layer queries only the rows the loss reads); None: the queries are the whole sequence.
    backend: 'einsum' is the plain form below (the fastest on CPU for small models);
    'xla' and 'cudnn' go through `jax.nn.dot_product_attention` (cuDNN flash attention on
    GPU); 'splash' is the Pallas TPU flash kernel (nn/splash.py), which 'auto' picks on TPU
    from `splash_min_length` keys (0: never); else 'auto' picks 'einsum' on CPU, cuDNN on
    GPU where it fits (`gpu_flash`), and XLA's otherwise. Selected queries (q_positions) never use
    'cudnn' or 'splash': their mask is explicit, and a flash kernel brings nothing to a
    handful of query rows.
    """
    backend = choose(backend, k.shape[1], splash_min_length)
    if backend == "splash" and q_positions is None:
        return splash_attention(q, k, v, padding_mask, causal)
    if backend in ("auto", "splash"):
        backend = {"cpu": "einsum", "gpu": gpu_flash(q, k, padding_mask, q_positions)}.get(platform())
    if backend != "einsum":
        if q_positions is None:
            mask = None if padding_mask is None else _broadcast(padding_mask)
            return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                                implementation=backend)
        mask = attention_mask(padding_mask, causal, q_positions, q.shape[1], k.shape[1])
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    mask = attention_mask(padding_mask, causal, q_positions, q.shape[1], k.shape[1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def split(qkv):
    """[b, l, t, h, d] -> t arrays [b, l, h, d]. `jnp.split`, whose gradient is one
    concatenate into [b, l, t, h, d]; indexing or moving t to the front makes it t zero-padded
    copies of the whole, summed, then transposed back (on CPU, ~5% of the CLIP-S step)."""
    return [part[:, :, 0] for part in jnp.split(qkv, qkv.shape[2], axis=2)]


class Attention(nn.Module):
    """Self-attention with fused (or separate) q/k/v projections and an output projection.

    With `select` [b, n], only the rows at those positions query (keys and values still
    come from every row): [b, l, e] -> [b, n, e], the rows the full layer would give there.
    With `rope` [l, d/2] (rotary angles of each row, nn.positions), queries and keys are
    rotated by their rows' angles before the dot product.
    With `cache` (k, v [b, L, h, d], start [b]: nn.decode), x holds the rows start + 0..l-1
    of each sequence: their keys and values are written into the cache there, they attend
    causally to the cache's rows, and the call returns (out, (k, v)).
    """

    num_heads: int
    fused_qkv: bool = True
    backend: str = "auto"
    splash_min_length: int = 0   # 'auto' runs the splash kernel on TPU from this many keys
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, padding_mask=None, causal=False, select=None, rope=None, cache=None):  # x: [b, l, (h d)]
        width = x.shape[-1]
        h, d = self.num_heads, width // self.num_heads
        x = x.astype(self.dtype)

        def param(name, shape, names, init=normal_init(width ** -0.5)):
            return self.param(name, logical(init, names), shape, self.param_dtype).astype(self.dtype)

        zeros = nn.initializers.zeros
        if self.fused_qkv:
            w = param("qkv_kernel", (width, 3, h, d), ("embed", None, "heads", "kv"))
            b = param("qkv_bias", (3, h, d), (None, "heads", "kv"), zeros)
            if select is None:
                q, k, v = split(linear(x, w) + b)                           # [b, l, 3, h, d]
            else:
                q = jnp.einsum("bne,ehd->bnhd", take_rows(x, select), w[:, 0]) + b[0]
                k, v = split(linear(x, w[:, 1:]) + b[1:])
        else:
            q, k, v = (
                jnp.einsum("ble,ehd->blhd", take_rows(x, select) if n == "q" else x,
                           param(f"{n}_kernel", (width, h, d), ("embed", "heads", "kv")))
                + param(f"{n}_bias", (h, d), ("heads", "kv"), zeros)
                for n in "qkv")
        if rope is not None:
            k = rotate(k, rope)
            q = rotate(q, rope if select is None else jnp.asarray(rope)[select])
        if cache is not None:
            k, v, select = write_cache(cache, k, v)
        y = dot_product_attention(q, k, v, padding_mask=padding_mask, causal=causal,
                                  q_positions=select, backend=self.backend,
                                  splash_min_length=self.splash_min_length)
        w_out = param("out_kernel", (h, d, width), ("heads", "kv", "embed"))
        b_out = param("out_bias", (width,), ("embed",), zeros)
        out = linear(y.reshape(y.shape[:2] + (h * d,)), w_out.reshape(h * d, width)) + b_out
        return out if cache is None else (out, (k, v))
