"""Model modules against plain-numpy references: attention, scan vs unrolled, towers, dtypes."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import Attention, dot_product_attention
from mmjax.nn.clip import DualEncoder
from mmjax.nn.options import EncoderOptions, TextOptions, ViTOptions
from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import Encoder
from mmjax.nn.vit import ViT


def _encoder(**kw):
    return Encoder(EncoderOptions(**kw))


def _vit(**kw):
    return ViT(ViTOptions(**kw))


def _text(**kw):
    return TextTransformer(TextOptions(**kw))


def init_params(module, *args, **kw):
    """Unboxed params of one jitted init: an eager init dispatches (and compiles) op by op."""
    return jax.jit(lambda *a: nn.unbox(module.init(jax.random.PRNGKey(0), *a, **kw)["params"]))(*args)


TOL = dict(rtol=1e-5, atol=1e-5)


def np_attention(q, k, v, padding_mask=None, causal=False):
    """q, k, v [b, l, h, d] -> [b, l, h, d], float64 numpy."""
    q, k, v = (np.float64(a) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    allowed = np.ones(logits.shape, bool)
    if padding_mask is not None:
        allowed &= padding_mask[:, None, None, :]
    if causal:
        allowed &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(allowed, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("backend", ["einsum", "xla"])
@pytest.mark.parametrize("causal,padded", [(False, False), (False, True), (True, False), (True, True)])
def test_attention_matches_numpy(backend, causal, padded):
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 7, 3, 4)).astype(np.float32) for _ in range(3))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3], bool) if padded else None
    got = dot_product_attention(q, k, v, padding_mask=mask, causal=causal, backend=backend)
    np.testing.assert_allclose(got, np_attention(q, k, v, mask, causal), **TOL)


def test_attention_module_matches_numpy_projections():
    x = np.random.default_rng(1).normal(size=(2, 5, 12)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    module = Attention(num_heads=3)
    params = init_params(module, x, mask)
    params = jax.tree.map(lambda p: p + 0.1 * np.random.default_rng(2).normal(size=p.shape), params)
    got = module.apply({"params": params}, x, mask)
    p = jax.tree.map(np.asarray, params)
    q, k, v = (np.einsum("ble,ehd->blhd", x, p["qkv_kernel"][:, i]) + p["qkv_bias"][i] for i in range(3))
    want = np.einsum("blhd,hde->ble", np_attention(q, k, v, mask), p["out_kernel"]) + p["out_bias"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_fused_and_separate_qkv_agree():
    x = np.random.default_rng(3).normal(size=(2, 6, 8)).astype(np.float32)
    fused = nn.unbox(Attention(2).init(jax.random.PRNGKey(0), x)["params"])
    separate = {"out_kernel": fused["out_kernel"], "out_bias": fused["out_bias"],
                **{f"{n}_kernel": fused["qkv_kernel"][:, i] for i, n in enumerate("qkv")},
                **{f"{n}_bias": fused["qkv_bias"][i] for i, n in enumerate("qkv")}}
    np.testing.assert_allclose(Attention(2).apply({"params": fused}, x, None, True),
                               Attention(2, fused_qkv=False).apply({"params": separate}, x, None, True),
                               **TOL)


def _stack_layers(params, depth):
    """Unrolled encoder params {'layers_i': p} -> scanned {'layers': stacked p}."""
    return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(depth)])}


@pytest.mark.parametrize("pre_norm,causal,remat", [(True, True, "none"), (False, False, "full"),
                                                   (True, False, "dots")])
def test_scan_and_unrolled_give_the_same_outputs(pre_norm, causal, remat):
    x = np.random.default_rng(4).normal(size=(2, 6, 16)).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3], bool)
    kw = dict(depth=3, num_heads=2, mlp_dim=32, pre_norm=pre_norm, causal=causal, remat=remat)
    unrolled = _encoder(scan=False, **kw)
    params = init_params(unrolled, x, mask)
    scanned = _encoder(scan=True, **kw)
    stacked = _stack_layers(params, 3)
    assert jax.tree.structure(stacked) == jax.tree.structure(
        init_params(scanned, x, mask))
    want = jax.jit(unrolled.apply)({"params": params}, x, mask)
    np.testing.assert_allclose(jax.jit(scanned.apply)({"params": stacked}, x, mask), want, **TOL)
    # and gradients agree too (remat must not change them)
    g_unrolled = jax.jit(jax.grad(lambda p: unrolled.apply({"params": p}, x, mask).sum()))(params)
    g_scanned = jax.jit(jax.grad(lambda p: scanned.apply({"params": p}, x, mask).sum()))(stacked)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 _stack_layers(g_unrolled, 3), g_scanned)


def test_scanned_params_carry_layers_axis_name():
    x = np.zeros((1, 4, 8), np.float32)
    boxed = _encoder(depth=2, num_heads=2, mlp_dim=16, scan=True).init(jax.random.PRNGKey(0), x)["params"]
    spec = nn.get_partition_spec(boxed)
    assert spec["layers"]["attn"]["qkv_kernel"] == jax.sharding.PartitionSpec("layers", "embed", None, "heads", "kv")
    assert spec["layers"]["mlp"]["fc1"]["kernel"] == jax.sharding.PartitionSpec("layers", "embed", "mlp")


def test_text_tower_eot_pooling_and_causality():
    tower = _text(vocab_size=50, context_length=8, width=16, depth=2, num_heads=2,
                            mlp_dim=32, causal=True, pool="eot", scan=False)
    tokens = np.array([[48, 5, 6, 49, 0, 0, 0, 0], [48, 7, 8, 9, 10, 49, 0, 0]], np.int32)
    params = init_params(tower, tokens)
    pooled, seq = tower.apply({"params": params}, tokens)
    np.testing.assert_allclose(pooled, seq[np.arange(2), [3, 5]], **TOL)
    # causal: changing tokens after EOT changes nothing at or before it
    changed = tokens.copy()
    changed[:, 6:] = 11
    pooled2, _ = tower.apply({"params": params}, changed)
    np.testing.assert_allclose(pooled, pooled2, **TOL)


def test_bidirectional_text_tower_ignores_padding():
    tower = _text(vocab_size=50, context_length=8, width=16, depth=2, num_heads=2,
                            mlp_dim=32, causal=False, pool="first", pre_norm=False,
                            embed_norm=True, final_norm=False, type_vocab_size=2, scan=False)
    tokens = np.array([[2, 5, 6, 3, 0, 0, 0, 0]], np.int32)
    params = init_params(tower, tokens)
    pooled, seq = tower.apply({"params": params}, tokens)
    np.testing.assert_allclose(pooled, seq[:, 0], **TOL)
    # real tokens attend only to real tokens: truncating the padding changes nothing
    _, seq_short = tower.apply({"params": params}, tokens[:, :4])
    np.testing.assert_allclose(seq[:, :4], seq_short, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes(pool):
    vit = _vit(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32, pool=pool, scan=False)
    images = np.random.default_rng(5).normal(size=(3, 8, 12, 2)).astype(np.float32)
    params = init_params(vit, images)
    assert params["pos_embedding"].shape == ((2 * 3) + (pool == "cls"), 16)
    assert ("cls_token" in params) == (pool == "cls")
    assert vit.apply({"params": params}, images).shape == (3, 16)


def np_patch_conv(images, conv_weight, p):
    """open_clip's patch embedding in numpy: `conv1` (stride = kernel = p, weight
    [width, c, p, p]) over NHWC images, the output grid read row by row (its
    `x.reshape(b, width, -1).permute(0, 2, 1)`): [b, (H/p)·(W/p), width], float64."""
    b, H, W, _ = images.shape
    out = np.zeros((b, (H // p) * (W // p), conv_weight.shape[0]))
    for i in range(H // p):
        for j in range(W // p):
            window = np.float64(images[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :])   # [b, p, p, c]
            out[:, i * (W // p) + j] = np.einsum("nyxc,ocyx->no", window, conv_weight)
    return out


def test_vit_patch_embedding_is_open_clips_conv_over_row_major_patches():
    """The ViT's own patch embedding (its `patch_embed` output, captured from a forward pass)
    equals open_clip's conv1 on the same images, with the kernel laid out as the converter
    documents: row (y·p + x)·c + channel of `patch_embed/kernel` is conv1.weight[:, channel, y, x].
    Non-square images and 3 channels, so a swapped grid, patch or channel order shows."""
    p, width, c = 4, 8, 3
    vit = _vit(patch_size=p, width=width, depth=1, num_heads=2, mlp_dim=16, scan=False)
    rng = np.random.default_rng(5)
    images = rng.normal(size=(2, 8, 12, c)).astype(np.float32)
    conv_weight = rng.normal(size=(width, c, p, p)).astype(np.float32)   # open_clip's layout
    kernel = np.zeros((p * p * c, width), np.float32)
    for y in range(p):
        for x in range(p):
            for ch in range(c):
                kernel[(y * p + x) * c + ch] = conv_weight[:, ch, y, x]
    params = init_params(vit, images)
    params["patch_embed"]["kernel"] = jnp.asarray(kernel)
    _, state = vit.apply({"params": params}, images, capture_intermediates=True,
                         mutable=["intermediates"])
    (embedded,) = state["intermediates"]["patch_embed"]["__call__"]
    assert embedded.shape == (2, (8 // p) * (12 // p), width)
    np.testing.assert_allclose(embedded, np_patch_conv(images, conv_weight, p), rtol=1e-5, atol=1e-5)


def _tiny_clip(**kw):
    return DualEncoder(_vit(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32, scan=False),
                       _text(vocab_size=50, context_length=8, width=16, depth=1,
                                       num_heads=2, mlp_dim=32, scan=False), embed_dim=8, **kw)


def test_dual_encoder_logit_scale_init_clamp_and_normalised_embeddings():
    model = _tiny_clip()
    images, tokens = np.zeros((2, 8, 8, 1), np.float32), np.array([[48, 3, 49, 0] * 2] * 2, np.int32)
    params = init_params(model, images, tokens)
    np.testing.assert_allclose(params["logit_scale"], np.log(1 / 0.07), rtol=1e-6)
    zimg, ztxt, scale, bias = model.apply({"params": params}, images, tokens)
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=-1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ztxt, axis=-1), 1, rtol=1e-5)
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)
    assert float(bias) == 0.0
    params["logit_scale"] = jnp.asarray(10.0)  # exp(10) >> 100
    assert float(model.apply({"params": params}, images, tokens)[2]) == 100.0
    siglip = _tiny_clip(init_logit_bias=-10.0)
    p = init_params(siglip, images, tokens)
    assert float(siglip.apply({"params": p}, images, tokens)[3]) == -10.0


def test_bfloat16_compute_keeps_float32_params():
    model = DualEncoder(_vit(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                            dtype=jnp.bfloat16, scan=True),
                        _text(vocab_size=50, context_length=8, width=16, depth=1, num_heads=2,
                                        mlp_dim=32, dtype=jnp.bfloat16, scan=True), embed_dim=8)
    images, tokens = np.zeros((2, 8, 8, 1), np.float32), np.array([[48, 3, 49, 0] * 2] * 2, np.int32)
    params = init_params(model, images, tokens)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    seq = model.apply({"params": params}, tokens, method=lambda m, t: m.text(t)[1])
    assert seq.dtype == jnp.bfloat16


def test_presets_and_options_from_config():
    from mmjax.config import defaults
    from mmjax.nn import options, presets
    assert presets.image("B/16") == dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16)
    assert presets.text("bert", "B")["pre_norm"] is False and presets.text("clip", "B")["width"] == 512
    with pytest.raises(ValueError, match="valid: Ti, S, M, B, L, H"):
        presets.image("Q/16")
    c = defaults()
    c.model.image.update(presets.image("S/16"))
    c.model.dtype = "bfloat16"
    vit = options.from_config(c.model, "image")
    assert (vit.width, vit.depth, vit.patch_size, vit.dtype) == (384, 12, 16, jnp.bfloat16)
    assert vit.replace(depth=2).depth == 2 and vit.depth == 12   # frozen: replace copies
    c.model.text.colour = "red"
    with pytest.raises(ValueError, match="model.text has keys no tower option takes: \\['colour'\\]"):
        options.from_config(c.model, "text")


def test_text_tower_mean_pooling_averages_the_real_tokens():
    tower = _text(vocab_size=50, context_length=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                  causal=False, pool="mean", scan=False)
    tokens = np.array([[2, 5, 6, 3, 0, 0, 0, 0], [2, 7, 8, 9, 10, 11, 12, 3]], np.int32)
    params = init_params(tower, tokens)
    pooled, seq = tower.apply({"params": params}, tokens)
    np.testing.assert_allclose(pooled[0], np.asarray(seq[0, :4]).mean(0), **TOL)
    np.testing.assert_allclose(pooled[1], np.asarray(seq[1]).mean(0), **TOL)
