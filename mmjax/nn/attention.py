"""Multi-head attention: one function for every backend, one module with logical axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init


def dot_product_attention(q, k, v, *, padding_mask=None, causal=False, backend="auto"):
    """Softmax attention of q, k, v shaped [b, l, h, d] -> [b, l, h, d].

    padding_mask: [b, l_k] bool, True where the key is a real token.
    backend: 'einsum' is the plain form below (the fastest on CPU for small models);
    'xla' and 'cudnn' go through `jax.nn.dot_product_attention` (cuDNN flash attention on
    GPU); 'auto' picks 'einsum' on CPU and lets `jax.nn.dot_product_attention` choose elsewhere.
    """
    if backend == "auto":
        backend = "einsum" if jax.default_backend() == "cpu" else None
    mask = None if padding_mask is None else padding_mask[:, None, None, :]
    if backend != "einsum":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=backend)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    if causal:
        causal_mask = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
        mask = causal_mask if mask is None else mask & causal_mask
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Attention(nn.Module):
    """Self-attention with fused (or separate) q/k/v projections and an output projection."""

    num_heads: int
    fused_qkv: bool = True
    backend: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, padding_mask=None, causal=False):  # x: [b, l, (h d)]
        width = x.shape[-1]
        h, d = self.num_heads, width // self.num_heads
        x = x.astype(self.dtype)

        def param(name, shape, names, init=normal_init(width ** -0.5)):
            return self.param(name, logical(init, names), shape, self.param_dtype).astype(self.dtype)

        zeros = nn.initializers.zeros
        if self.fused_qkv:
            w = param("qkv_kernel", (width, 3, h, d), ("embed", None, "heads", "kv"))
            b = param("qkv_bias", (3, h, d), (None, "heads", "kv"), zeros)
            q, k, v = jnp.einsum("ble,ethd->tblhd", x, w) + b[:, None, None]
        else:
            q, k, v = (
                jnp.einsum("ble,ehd->blhd", x, param(f"{n}_kernel", (width, h, d), ("embed", "heads", "kv")))
                + param(f"{n}_bias", (h, d), ("heads", "kv"), zeros)
                for n in "qkv")
        y = dot_product_attention(q, k, v, padding_mask=padding_mask, causal=causal,
                                  backend=self.backend)
        w_out = param("out_kernel", (h, d, width), ("heads", "kv", "embed"))
        b_out = param("out_bias", (width,), ("embed",), zeros)
        return jnp.einsum("blhd,hde->ble", y, w_out) + b_out

