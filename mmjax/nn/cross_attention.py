"""Cross-attention: queries from one sequence, keys and values from a context of its own width.

Used by the fusion encoders (text blocks attending to image tokens, nn/fusion.py) and by any
decoder that reads an encoder's output; the transformer Block adds it as a residual sub-layer
between self-attention and the MLP when it is given a context (nn/transformer.py).
"""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.attention import dot_product_attention
from mmjax.nn.init import logical, normal_init
from mmjax.nn.linear import linear


class CrossAttention(nn.Module):
    """x [b, l, e] attending to context [b, n, c] -> [b, l, e].

    q = x Wq [e, h, d], k = context Wk [c, h, d], v = context Wv [c, h, d] (each + bias),
    softmax(q kᵀ / √d) v, then the output projection [h, d, e] + bias; d = e / h.
    `context_mask` [b, n]: True at the context rows that may be attended (None: all).
    """

    num_heads: int
    backend: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context, context_mask=None, width=None):
        """A decoder projects a fixed context once: `cross(None, context, width=e)` -> (k, v)
        [b, n, h, d] (e: the queries' width), then `cross(x, (k, v))` attends to them
        without projecting again (nn/decode.py)."""
        projected = isinstance(context, tuple)
        width = width if x is None else x.shape[-1]
        h, d = self.num_heads, width // self.num_heads

        def param(name, shape, names, init):
            return self.param(name, logical(init, names), shape, self.param_dtype).astype(self.dtype)

        zeros = nn.initializers.zeros

        def project(name, inputs, in_width):
            w = param(f"{name}_kernel", (in_width, h, d), ("embed", "heads", "kv"), normal_init(in_width ** -0.5))
            return linear(inputs, w) + param(f"{name}_bias", (h, d), ("heads", "kv"), zeros)

        q = None if x is None else project("q", x.astype(self.dtype), width)   # q first: init order
        if projected:
            k, v = (c.astype(self.dtype) for c in context)
        else:
            context = nn.with_logical_constraint(context.astype(self.dtype),
                                                 ("batch", "image_length", "activation_embed"))
            ctx_width = context.shape[-1]
            k, v = project("k", context, ctx_width), project("v", context, ctx_width)
        if x is None:
            return k, v
        y = dot_product_attention(q, k, v, padding_mask=context_mask, backend=self.backend)   # [b, l, h, d]
        w_out = param("out_kernel", (h, d, width), ("heads", "kv", "embed"), normal_init(width ** -0.5))
        b_out = param("out_bias", (width,), ("embed",), zeros)
        return linear(y.reshape(y.shape[:2] + (h * d,)), w_out.reshape(h * d, width)) + b_out
