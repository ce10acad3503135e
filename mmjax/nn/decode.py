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

A decoder whose blocks cross-attend (a captioner's, to image tokens; nn/caption.py) gets
its context projected once, `project_context` (each layer's keys and values of the image
tokens, [layers, b, n, h, d]) before the prefill, and every `forward` call attends to those;
causal LMs have none.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import Attention
from mmjax.nn.cross_attention import CrossAttention
from mmjax.nn.kv_cache import KVCache, constrain
from mmjax.nn.options import EncoderOptions
from mmjax.nn.transformer import Mlp, layer_norm


class CachedBlock(nn.Module):
    """`transformer.Block` (pre- or post-LN, same param names) on new rows x [b, n, e] at
    rows start + 0..n-1, attending causally to the cache: (x, (k, v)) -> (y, (k', v')).
    `context`: this layer's projected context (k, v [b, n, h, d]), read by its cross-attention
    ('cross_attn', 'ln_cross' as in Block); None: no cross-attention."""

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, cache, rope, context=None):   # cache: (k, v [b, L, h, d], start [b])
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        attn = Attention(o.num_heads, o.fused_qkv, o.attention, name="attn", **kw)
        mlp = Mlp(o.mlp_dim, o.activation, name="mlp", **kw)
        ln1 = layer_norm(o.norm_eps, name="ln1", **kw)
        ln2 = layer_norm(o.norm_eps, name="ln2", **kw)
        if context is not None:
            cross = CrossAttention(o.num_heads, o.attention, name="cross_attn", **kw)
            ln_cross = layer_norm(o.norm_eps, name="ln_cross", **kw)
        x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))
        if o.pre_norm:
            y, kv = attn(ln1(x), None, True, None, rope, cache)
            x = x + y
            if context is not None:
                x = x + cross(ln_cross(x), context)
            return x + mlp(ln2(x)), kv
        y, kv = attn(x, None, True, None, rope, cache)
        x = ln1(x + y)
        if context is not None:
            x = ln_cross(x + cross(x, context))
        return ln2(x + mlp(x)), kv


def init_cache(model, batch: int, length: int) -> KVCache:
    """An empty cache of `length` rows for `batch` sequences of `model` (a CausalLM)."""
    o = model.text.opts
    return KVCache.zeros(o.depth, batch, length, o.num_heads, o.width // o.num_heads, o.dtype)


def project_context(model, params, context):
    """Image tokens context [b, n, c] -> every layer's cross-attention keys and values of
    them, (k, v) [layers, b, n, h, d]: computed once per generation, read at every step."""
    o = model.text.opts
    cross = CrossAttention(o.num_heads, o.attention, dtype=o.dtype, param_dtype=o.param_dtype)
    layers = params["text"]["encoder"]
    if "cross_attn" not in (layers["layers"] if o.scan else layers["layers_0"]):
        raise ValueError("this model's text blocks have no cross-attention: it generates from "
                         "text alone; drop the images (a captioner is task 'clip+caption')")
    project = lambda p: cross.apply({"params": p["cross_attn"]}, None, context, width=o.width)  # noqa: E731
    if o.scan:
        return jax.vmap(project)(layers["layers"])
    per_layer = [project(layers[f"layers_{i}"]) for i in range(o.depth)]
    return tuple(jnp.stack(parts) for parts in zip(*per_layer))


def forward(model, params, tokens, start, cache: KVCache, context=None):
    """tokens [b, n] at rows start [b] + 0..n-1 -> (final hidden states [b, n, width], the
    cache with their keys and values). Row p's attention sees the cache's rows 0..p.
    `context`: `project_context`'s (k, v) [layers, b, n_img, h, d], or None."""
    o = model.text.opts
    rows = start[:, None] + jnp.arange(tokens.shape[1])[None, :]
    x, rope = model.apply({"params": params}, tokens, rows, cache.length,
                          method=lambda m, t, r, n: m.text.embed(t, rows=r, length=n))
    layers = params["text"]["encoder"]
    block = CachedBlock(o)

    def layer(x, p, k, v, ctx):
        x, (k, v) = block.apply({"params": p}, x, (k, v, start), rope, ctx)
        return x, constrain(k), constrain(v)

    if o.scan:
        def body(x, layer_in):
            x, k, v = layer(x, *layer_in)
            return x, (k, v)
        x, (k, v) = jax.lax.scan(body, x, (layers["layers"], cache.k, cache.v, context))
    else:
        k, v = cache
        for i in range(o.depth):
            ctx = None if context is None else (context[0][i], context[1][i])
            x, k_i, v_i = layer(x, layers[f"layers_{i}"], k[i], v[i], ctx)
            k, v = k.at[i].set(k_i), v.at[i].set(v_i)
    x = model.apply({"params": params}, x, method=lambda m, x: m.text.final(x))
    return x, KVCache(constrain(k), constrain(v))


def logits(model, params, hidden):
    """The model's vocabulary head on hidden states [..., width] -> [..., vocab]."""
    return model.apply({"params": params}, hidden, method="head")
