"""Vision transformer image tower: patch embedding, class token, mean or attention (MAP) pooling."""

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import positions
from mmjax.nn.init import logical, normal_init
from mmjax.nn.options import ViTOptions
from mmjax.nn.transformer import Encoder, Mlp, layer_norm


class ViT(nn.Module):
    """Images [b, H, W, C] -> pooled features [b, width] (after the final LayerNorm); with
    `all_tokens`, (pooled [b, width], tokens [b, n_img, width]): every (class +) patch token
    after the final LayerNorm, which a fusion encoder attends to (logical axis 'image_length').

    Layout follows CLIP: patch embed (no bias by default), + positions, LN (`ln_pre`), encoder,
    pool ('cls' token or 'mean' over patches), LN; 'map' (SigLIP's, big_vision's MAPHead): LN
    on every patch, then a learned probe attends to them (`MapHead`). With 'cls' the last layer computes only
    the class token's row (`opts.prune_last_layer`). `opts.position`: a learned table, MAE's
    2-D sinusoids, or axial 2-D rotary queries and keys (nn.positions); under the last two the
    class token has no position.
    """

    opts: ViTOptions

    @nn.compact
    def __call__(self, images, all_tokens: bool = False):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        p, c = o.patch_size, images.shape[-1]
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not divisible by "
                             f"model.image.patch_size={p}; resize the images (data.image_size) "
                             f"or pick a patch size that divides them")
        patches = einops.rearrange(images.astype(o.dtype), "b (h p) (w q) c -> b (h w) (p q c)",
                                   p=p, q=p)
        x = nn.Dense(o.width, use_bias=o.patch_bias, name="patch_embed", **kw,
                     kernel_init=logical(normal_init((p * p * c) ** -0.5), ("patch", "embed")),
                     bias_init=logical(nn.initializers.zeros, ("embed",)))(patches)
        if o.pool == "cls":
            cls = self.param("cls_token", logical(normal_init(o.width ** -0.5), ("embed",)),
                             (o.width,), o.param_dtype)
            cls = jnp.broadcast_to(cls.astype(o.dtype), (x.shape[0], 1, o.width))
            x = jnp.concatenate([cls, x], axis=1)
        positions.check(o.position, "image")
        rows, cols = images.shape[1] // p, images.shape[2] // p
        cls_row = positions.with_class_token if o.pool == "cls" else (lambda table: table)
        rope = None
        if o.position == "learned":
            pos = self.param("pos_embedding", logical(normal_init(0.01), ("length", "embed")),
                             x.shape[1:], o.param_dtype)
            x = x + pos.astype(o.dtype)
        elif o.position == "sinusoidal":
            x = x + jnp.asarray(cls_row(positions.sinusoid_2d(rows, cols, o.width)), o.dtype)
        else:   # rotary: every layer rotates queries and keys by these angles
            rope = cls_row(positions.rotary_2d(rows, cols, o.width // o.num_heads, o.rope_base))
        if o.ln_pre:
            x = layer_norm(o.norm_eps, name="ln_pre", **kw)(x)
        encoder = Encoder(o.replace(causal=False), name="encoder")
        ln_post = layer_norm(o.norm_eps, name="ln_post", **kw)
        if all_tokens:   # every row of the last layer; pooled as below, from the same pass
            x = encoder(x, rope=rope)
            tokens = nn.with_logical_constraint(ln_post(x), ("batch", "image_length", "activation_embed"))
            if o.pool == "map":
                return MapHead(o, name="map_head")(tokens), tokens
            return (tokens[:, 0] if o.pool == "cls" else ln_post(x.mean(axis=1))), tokens
        if o.pool == "cls":   # the last layer runs only at the class token
            pooled = encoder(x, select=jnp.zeros((x.shape[0], 1), jnp.int32), rope=rope)[:, 0]
        elif o.pool == "map":
            return MapHead(o, name="map_head")(ln_post(encoder(x, rope=rope)))
        else:
            pooled = encoder(x, rope=rope).mean(axis=1)
        return ln_post(pooled)


class MapHead(nn.Module):
    """Multi-head attention pooling (SigLIP; big_vision's MAPHead): tokens [b, n, width] ->
    [b, width]. A learned probe queries the tokens (q from the probe, k and v from the tokens:
    one [width, 3, heads, d] kernel as the towers' fused one), then a pre-LN MLP with a residual."""

    opts: ViTOptions

    @nn.compact
    def __call__(self, x):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        width, h = x.shape[-1], o.num_heads
        d = width // h

        def param(name, shape, names, init=normal_init(width ** -0.5)):
            return self.param(name, logical(init, names), shape, o.param_dtype).astype(o.dtype)

        probe = param("probe", (width,), ("embed",))
        w = param("qkv_kernel", (width, 3, h, d), ("embed", None, "heads", "kv"))
        b = param("qkv_bias", (3, h, d), (None, "heads", "kv"), nn.initializers.zeros)
        x = x.astype(o.dtype)
        q = jnp.einsum("e,ehd->hd", probe, w[:, 0]) + b[0]                        # [h, d]
        k = jnp.einsum("bne,ehd->bnhd", x, w[:, 1]) + b[1]
        v = jnp.einsum("bne,ehd->bnhd", x, w[:, 2]) + b[2]
        scores = jnp.einsum("hd,bnhd->bhn", q, k).astype(jnp.float32) * d ** -0.5
        weights = jax.nn.softmax(scores, axis=-1).astype(o.dtype)
        y = jnp.einsum("bhn,bnhd->bhd", weights, v)
        y = jnp.einsum("bhd,hde->be", y, param("out_kernel", (h, d, width), ("heads", "kv", "embed"))) \
            + param("out_bias", (width,), ("embed",), nn.initializers.zeros)
        return y + Mlp(o.mlp_dim, o.activation, name="mlp", **kw)(layer_norm(o.norm_eps, name="ln", **kw)(y)[:, None])[:, 0]
