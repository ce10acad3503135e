"""Transformer blocks (pre-LN or post-LN) and the encoder stack with scan and remat switches."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import Attention, take_rows
from mmjax.nn.cross_attention import CrossAttention
from mmjax.nn.init import logical, normal_init
from mmjax.nn.linear import dot_general
from mmjax.nn.options import EncoderOptions

ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": nn.relu,
}

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_norm(eps, dtype, param_dtype, name=None):
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=logical(nn.initializers.ones, ("embed",)),
                        bias_init=logical(nn.initializers.zeros, ("embed",)))


def dense(features, names, dtype, param_dtype, name, stddev):
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name, dot_general=dot_general,
                    kernel_init=logical(normal_init(stddev), names),
                    bias_init=logical(nn.initializers.zeros, names[-1:]))


class Mlp(nn.Module):
    mlp_dim: int
    activation: str = "gelu"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [b, l, e] -> [b, l, e]
        width = x.shape[-1]
        h = dense(self.mlp_dim, ("embed", "mlp"), self.dtype, self.param_dtype, "fc1", width ** -0.5)(x)
        h = nn.with_logical_constraint(ACTIVATIONS[self.activation](h), ("batch", "length", "activation_mlp"))
        out = dense(width, ("mlp", "embed"), self.dtype, self.param_dtype, "fc2", self.mlp_dim ** -0.5)(h)
        # Pinned like the residual stream (Megatron's all-reduce after fc2). Unpinned, XLA's SPMD
        # partitioner (jax 0.10.2) could permute it into fc2's ('tensor', 'fsdp') device order
        # and not back, mixing batch shards on data x fsdp x tensor (tests/test_fusion.py, concat).
        return nn.with_logical_constraint(out, ("batch", "length", "activation_embed"))


class Block(nn.Module):
    """One transformer layer. `opts.pre_norm`: x + f(LN(x)) (CLIP/ViT); else LN(x + f(x)) (BERT).

    With `select` [b, n]: only the output rows at those positions, [b, l, e] -> [b, n, e]
    (keys and values from every row; the rest of the layer on the selected rows only).
    `rope` [l, d/2]: rotary angles of each row (None: no rotation), see nn.positions.
    With `context` [b, n, c], a cross-attention sub-layer ('cross_attn', 'ln_cross') between
    self-attention and the MLP attends to it (a fusion encoder's image tokens); without, the
    block is the plain one and those params, if any, go unused.
    """

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, padding_mask, select=None, rope=None, context=None):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        attn = Attention(o.num_heads, o.fused_qkv, o.attention, o.splash_min_length, name="attn", **kw)
        mlp = Mlp(o.mlp_dim, o.activation, name="mlp", **kw)
        ln1 = layer_norm(o.norm_eps, name="ln1", **kw)
        ln2 = layer_norm(o.norm_eps, name="ln2", **kw)
        x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))
        if context is not None:
            cross = CrossAttention(o.num_heads, o.attention, name="cross_attn", **kw)
            ln_cross = layer_norm(o.norm_eps, name="ln_cross", **kw)
        if o.pre_norm:
            x = take_rows(x, select) + attn(ln1(x), padding_mask, o.causal, select, rope)
            if context is not None:
                x = x + cross(ln_cross(x), context)
            x = x + mlp(ln2(x))
        else:
            x = ln1(take_rows(x, select) + attn(x, padding_mask, o.causal, select, rope))
            if context is not None:
                x = ln_cross(x + cross(x, context))
            x = ln2(x + mlp(x))
        return x


class ScannedBlock(Block):
    """A Block with the (carry, xs) -> (carry, ys) signature that `nn.scan` needs."""

    @nn.compact
    def __call__(self, x, padding_mask, rope, context):
        return super().__call__(x, padding_mask, None, rope, context), None


def _remat(block, o, scanned):
    if o.remat == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[o.remat], prevent_cse=not scanned)


def _stack(o, depth):
    """`depth` scanned blocks, params stacked on a leading 'layers' axis."""
    return nn.scan(_remat(ScannedBlock, o, True), variable_axes={"params": 0},
                   split_rngs={"params": True}, in_axes=(nn.broadcast,) * 3, length=depth,
                   metadata_params={nn.PARTITION_NAME: "layers"})


class _SplitStack(nn.Module):
    """The scanned layers, seen as {'head': the first depth - 1 stacked, 'last': the last}."""

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, padding_mask, select, rope, context):  # [b, l, e] -> [b, n, e]
        o = self.opts
        if o.depth > 1:
            x, _ = _stack(o, o.depth - 1)(o, name="head")(x, padding_mask, rope, context)
        return _remat(Block, o, False)(o, name="last")(x, padding_mask, select, rope, context)


def _split_last(variables):
    """{'params': stacked [depth, ...]} -> {'params': {'head': [depth - 1, ...], 'last': [...]}}."""
    params = variables["params"]
    return {"params": {"head": jax.tree.map(lambda p: p[:-1], params),
                       "last": jax.tree.map(lambda p: p[-1], params)}}


class Encoder(nn.Module):
    """`opts.depth` blocks; `opts.scan` stacks their params on a leading 'layers' axis (fast
    compiles), `opts.remat` names a rematerialisation policy ('none', 'full', 'dots', ...).

    With `select` [b, n] (the positions the caller reads), only those output rows come back,
    [b, n, e], and with `opts.prune_last_layer` the last layer computes only them.
    `rope` [l, d/2]: the rotary angles of each row (nn.positions), or None.
    `context` [b, n, c]: every block cross-attends to it (see Block); `causal` overrides
    `opts.causal` for this call (a fusion pass is bidirectional over a causal tower).
    """

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, padding_mask=None, select=None, rope=None, context=None,
                 causal=None):  # [b, l, e] -> [b, l | n, e]
        o = self.opts if causal is None else self.opts.replace(causal=causal)
        if select is None or not o.prune_last_layer or self.is_initializing():
            return take_rows(self._full(o, x, padding_mask, rope, context), select)
        if o.scan:   # the same stacked params, split into the scanned head and the last layer
            split = nn.map_variables(_SplitStack, "params", trans_in_fn=_split_last)
            return split(o, name="layers")(x, padding_mask, select, rope, context)
        block = _remat(Block, o, False)
        for i in range(o.depth):
            x = block(o, name=f"layers_{i}")(x, padding_mask, select if i == o.depth - 1 else None,
                                             rope, context)
        return x

    def _full(self, o, x, padding_mask, rope, context):
        """Every layer at every position: [b, l, e] -> [b, l, e]."""
        if o.scan:
            x, _ = _stack(o, o.depth)(o, name="layers")(x, padding_mask, rope, context)
            return x
        block = _remat(Block, o, False)
        for i in range(o.depth):
            x = block(o, name=f"layers_{i}")(x, padding_mask, None, rope, context)
        return x
