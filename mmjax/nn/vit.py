"""Vision transformer image tower: patch embedding, class token or mean pooling."""

import einops
import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.transformer import Encoder, layer_norm


class ViT(nn.Module):
    """Images [b, H, W, C] -> pooled features [b, width] (after the final LayerNorm).

    Layout follows CLIP: patch embed (no bias by default), + positions, LN (`ln_pre`), encoder,
    pool ('cls' token or 'mean' over patches), LN.
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    pool: str = "cls"
    ln_pre: bool = True
    patch_bias: bool = False
    pre_norm: bool = True
    activation: str = "gelu"
    norm_eps: float = 1e-5
    fused_qkv: bool = True
    attention: str = "auto"
    scan: bool = True
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p, c = self.patch_size, images.shape[-1]
        patches = einops.rearrange(images.astype(self.dtype), "b (h p) (w q) c -> b (h w) (p q c)",
                                   p=p, q=p)
        x = nn.Dense(self.width, use_bias=self.patch_bias, name="patch_embed", **kw,
                     kernel_init=logical(normal_init((p * p * c) ** -0.5), ("patch", "embed")),
                     bias_init=logical(nn.initializers.zeros, ("embed",)))(patches)
        if self.pool == "cls":
            cls = self.param("cls_token", logical(normal_init(self.width ** -0.5), ("embed",)),
                             (self.width,), self.param_dtype)
            cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
            x = jnp.concatenate([cls, x], axis=1)
        pos = self.param("pos_embedding", logical(normal_init(0.01), ("length", "embed")),
                         x.shape[1:], self.param_dtype)
        x = x + pos.astype(self.dtype)
        if self.ln_pre:
            x = layer_norm(self.norm_eps, name="ln_pre", **kw)(x)
        x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.pre_norm, self.activation,
                    self.norm_eps, False, self.fused_qkv, self.attention, self.scan, self.remat,
                    name="encoder", **kw)(x)
        pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return layer_norm(self.norm_eps, name="ln_post", **kw)(pooled)
