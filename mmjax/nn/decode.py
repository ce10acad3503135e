"""Cached decoding of a causal LM: the forward pass of new rows against a KVCache, on the model's own params.

`forward(model, params, tokens, start, cache)` runs tokens [b, n] as the rows start + 0..n-1
of each sequence: their keys and values are written into the cache and they attend to the
cache's rows up to their own. A prefill is one call with the (right-padded) prompts at
start 0; each decoding step one call with n = 1 at each row's own position. The params are
the training model's (a `CausalLM`'s): the embedding and the final norm run through the
tower's own methods (`TextTransformer.embed`, `final`), each layer as a `CachedBlock`,
which is `transformer.Block` on the same sub-tree of params (attn, mlp, ln1, ln2), its
attention given the cache. scan=True models (layers stacked on a leading axis) are walked
with `lax.scan`, scan=False ones layer by layer; the cache is [layers, ...] for both.

`context` is where a decoder that cross-attends (a captioner's, to image tokens) will take
its extra input; causal LMs have none.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import Attention
from mmjax.nn.kv_cache import KVCache, constrain
from mmjax.nn.options import EncoderOptions
from mmjax.nn.transformer import Mlp, layer_norm


class CachedBlock(nn.Module):
    """`transformer.Block` (pre- or post-LN, same param names) on new rows x [b, n, e] at
    rows start + 0..n-1, attending causally to the cache: (x, (k, v)) -> (y, (k', v'))."""

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, cache, rope):   # cache: (k, v [b, L, h, d], start [b])
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        attn = Attention(o.num_heads, o.fused_qkv, o.attention, name="attn", **kw)
        mlp = Mlp(o.mlp_dim, o.activation, name="mlp", **kw)
        ln1 = layer_norm(o.norm_eps, name="ln1", **kw)
        ln2 = layer_norm(o.norm_eps, name="ln2", **kw)
        x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))
        if o.pre_norm:
            y, kv = attn(ln1(x), None, True, None, rope, cache)
            x = x + y
            return x + mlp(ln2(x)), kv
        y, kv = attn(x, None, True, None, rope, cache)
        x = ln1(x + y)
        return ln2(x + mlp(x)), kv


def init_cache(model, batch: int, length: int) -> KVCache:
    """An empty cache of `length` rows for `batch` sequences of `model` (a CausalLM)."""
    o = model.text.opts
    return KVCache.zeros(o.depth, batch, length, o.num_heads, o.width // o.num_heads, o.dtype)


def forward(model, params, tokens, start, cache: KVCache, context=None):
    """tokens [b, n] at rows start [b] + 0..n-1 -> (final hidden states [b, n, width], the
    cache with their keys and values). Row p's attention sees the cache's rows 0..p."""
    if context is not None:
        raise NotImplementedError("this decoder has no cross-attention: context must be None")
    o = model.text.opts
    rows = start[:, None] + jnp.arange(tokens.shape[1])[None, :]
    x, rope = model.apply({"params": params}, tokens, rows, cache.length,
                          method=lambda m, t, r, n: m.text.embed(t, rows=r, length=n))
    layers = params["text"]["encoder"]
    block = CachedBlock(o)

    def layer(x, p, k, v):
        x, (k, v) = block.apply({"params": p}, x, (k, v, start), rope)
        return x, constrain(k), constrain(v)

    if o.scan:
        def body(x, layer_in):
            x, k, v = layer(x, *layer_in)
            return x, (k, v)
        x, (k, v) = jax.lax.scan(body, x, (layers["layers"], cache.k, cache.v))
    else:
        k, v = cache
        for i in range(o.depth):
            x, k_i, v_i = layer(x, layers[f"layers_{i}"], k[i], v[i])
            k, v = k.at[i].set(k_i), v.at[i].set(v_i)
    x = model.apply({"params": params}, x, method=lambda m, x: m.text.final(x))
    return x, KVCache(constrain(k), constrain(v))


def logits(model, params, hidden):
    """The model's vocabulary head on hidden states [..., width] -> [..., vocab]."""
    return model.apply({"params": params}, hidden, method="head")
