"""Transformer blocks (pre-LN or post-LN) and the encoder stack with scan and remat switches."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import Attention
from mmjax.nn.init import logical, normal_init
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
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
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
        return dense(width, ("mlp", "embed"), self.dtype, self.param_dtype, "fc2", self.mlp_dim ** -0.5)(h)


class Block(nn.Module):
    """One transformer layer. `opts.pre_norm`: x + f(LN(x)) (CLIP/ViT); else LN(x + f(x)) (BERT)."""

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, padding_mask):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        attn = Attention(o.num_heads, o.fused_qkv, o.attention, name="attn", **kw)
        mlp = Mlp(o.mlp_dim, o.activation, name="mlp", **kw)
        ln1 = layer_norm(o.norm_eps, name="ln1", **kw)
        ln2 = layer_norm(o.norm_eps, name="ln2", **kw)
        x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))
        if o.pre_norm:
            x = x + attn(ln1(x), padding_mask, o.causal)
            x = x + mlp(ln2(x))
        else:
            x = ln1(x + attn(x, padding_mask, o.causal))
            x = ln2(x + mlp(x))
        return x


class ScannedBlock(Block):
    """A Block with the (carry, xs) -> (carry, ys) signature that `nn.scan` needs."""

    @nn.compact
    def __call__(self, x, padding_mask):
        return super().__call__(x, padding_mask), None


class Encoder(nn.Module):
    """`opts.depth` blocks; `opts.scan` stacks their params on a leading 'layers' axis (fast
    compiles), `opts.remat` names a rematerialisation policy ('none', 'full', 'dots', ...)."""

    opts: EncoderOptions

    @nn.compact
    def __call__(self, x, padding_mask=None):  # [b, l, e] -> [b, l, e]
        o = self.opts
        block = ScannedBlock if o.scan else Block
        if o.remat != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[o.remat], prevent_cse=not o.scan)
        if o.scan:
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast,), length=o.depth,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(o, name="layers")(x, padding_mask)
            return x
        for i in range(o.depth):
            x = block(o, name=f"layers_{i}")(x, padding_mask)
        return x
