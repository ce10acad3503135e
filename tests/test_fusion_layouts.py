"""ALBEF's fusion stack and the single-stream (concat) encoder against plain-numpy forward passes."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from scipy.special import erf

from mmjax import config as config_lib
from mmjax import export, tasks
from tiny_configs import TOKENIZER, tiny_config

B, L, N_IMG, WIDTH, HEADS = 2, 8, 5, 16, 2


def ln(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attend(q, k, v, key_mask):
    """q [b, l, h, d], k, v [b, n, h, d], key_mask [b, n] -> [b, l, h * d]."""
    scores = np.einsum("blhd,bnhd->bhln", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(key_mask[:, None, None, :], scores, -np.inf)
    y = np.einsum("bhln,bnhd->blhd", softmax(scores), v)
    return y.reshape(y.shape[:2] + (-1,))


def self_attention(x, p, key_mask):
    w, b = p["qkv_kernel"], p["qkv_bias"]
    q, k, v = (np.einsum("ble,ehd->blhd", x, w[:, i]) + b[i] for i in range(3))
    return attend(q, k, v, key_mask) @ p["out_kernel"].reshape(-1, x.shape[-1]) + p["out_bias"]


def cross_attention(x, context, p):
    q = np.einsum("ble,ehd->blhd", x, p["q_kernel"]) + p["q_bias"]
    k, v = (np.einsum("bne,ehd->bnhd", context, p[f"{n}_kernel"]) + p[f"{n}_bias"] for n in "kv")
    y = attend(q, k, v, np.ones(context.shape[:2], bool))
    return y @ p["out_kernel"].reshape(-1, x.shape[-1]) + p["out_bias"]


def mlp(x, p):
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    return (0.5 * h * (1 + erf(h / np.sqrt(2)))) @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def block(x, p, key_mask, context=None, pre_norm=True):
    """A pre-LN (or post-LN) transformer block, with cross-attention when given a context."""
    if pre_norm:
        x = x + self_attention(ln(x, p["ln1"]), p["attn"], key_mask)
        if context is not None:
            x = x + cross_attention(ln(x, p["ln_cross"]), context, p["cross_attn"])
        return x + mlp(ln(x, p["ln2"]), p["mlp"])
    x = ln(x + self_attention(x, p["attn"], key_mask), p["ln1"])
    if context is not None:
        x = ln(x + cross_attention(x, context, p["cross_attn"]), p["ln_cross"])
    return ln(x + mlp(x, p["mlp"]), p["ln2"])


def stack(x, p, key_mask, context=None, pre_norm=True):
    for i in range(len(p)):
        x = block(x, p[f"layers_{i}"], key_mask, context, pre_norm)
    return x


def build(kind, layout="blip", depth=2, **text):
    """(model, params with every entry perturbed: nonzero biases and norms, float64 numpy)."""
    config = tiny_config("clip+itm+mlm")
    config.model.fusion.update(kind=kind, layout=layout, depth=depth)
    config.model.text.update(**text)
    config_lib.validate(config)
    task = tasks.get(config, TOKENIZER)
    model = task.build_model()
    method, args = task.init_args(B)
    params = nn.unbox(model.init(jax.random.key(0), *args, method=method))["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.normal(size=x.shape), params)
    return model, jax.tree.map(lambda x: x.astype(np.float32), params), params


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 63, (B, L)).astype(np.int32)
    tokens[1, 5:] = 0                                           # padding, masked as keys
    image_tokens = rng.normal(size=(B, N_IMG, WIDTH)).astype(np.float32)
    select = np.array([[0, 2, 4], [0, 1, 3]], np.int32)         # rows of the fused pass read
    return tokens, image_tokens, select


def check(model, params, p64, inputs, rows):
    """The model's fused rows at `select` and ITM logits equal numpy's `rows` [b, l, e]."""
    tokens, image_tokens, select = inputs
    got = model.apply({"params": params}, image_tokens, tokens, select, method="fused")
    np.testing.assert_allclose(got, np.take_along_axis(rows, select[..., None], 1), atol=1e-5, rtol=1e-5)
    logits = model.apply({"params": params}, image_tokens, tokens, method="itm_logits")
    head = p64["itm_head"]
    np.testing.assert_allclose(logits, rows[:, 0] @ head["kernel"] + head["bias"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [True, False], ids=["pre_ln", "post_ln_bert"])
def test_concat_encoder_matches_numpy(inputs, pre_norm):
    """[image tokens W + b + image_pos + type0; token + position (+ type, LN) + type1], the
    blocks over both with the text padding masked, the first text token to the ITM head."""
    text = {} if pre_norm else dict(pre_norm=False, embed_norm=True, final_norm=False, type_vocab_size=2)
    model, params, p = build("concat", **text)
    tokens, image_tokens, _ = inputs
    t, f = p["text"], p["fusion"]
    words = t["token_embed"]["embedding"][tokens] + t["pos_embedding"][:L]
    if not pre_norm:
        words = ln(words + t["type_embed"]["embedding"][0], t["ln_embed"])
    image = image_tokens @ f["image_in"]["kernel"] + f["image_in"]["bias"] + f["image_pos"]
    x = np.concatenate([image + f["type_embed"][0], words + f["type_embed"][1]], axis=1)
    if not pre_norm:
        x = ln(x, f["ln_embed"])
    mask = np.concatenate([np.ones((B, N_IMG), bool), tokens != 0], axis=1)
    x = stack(x, f["encoder"], mask, pre_norm=pre_norm)
    x = ln(x, f["ln_final"]) if pre_norm else x
    check(model, params, p, inputs, x[:, N_IMG:])


def test_albef_fusion_stack_matches_numpy(inputs):
    """The whole text tower (bidirectional, padding masked, ln_final), then the fusion blocks
    (self-attention, cross-attention to the image tokens, MLP) and their own final norm."""
    model, params, p = build("cross", "albef", depth=2)
    tokens, image_tokens, _ = inputs
    t, f = p["text"], p["fusion"]
    mask = tokens != 0
    x = t["token_embed"]["embedding"][tokens] + t["pos_embedding"][:L]
    x = ln(stack(x, t["encoder"], mask), t["ln_final"])
    x = ln(stack(x, f["encoder"], mask, image_tokens), f["ln_final"])
    check(model, params, p, inputs, x)
    assert "cross_attn" not in t["encoder"]["layers_0"]    # the text tower stays the contrastive one


def test_fusion_config_and_exports_refuse_in_one_line():
    config = tiny_config("clip+itm")
    config.model.fusion.kind = "stream"
    with pytest.raises(config_lib.ConfigError, match="cross, concat"):
        config_lib.validate(config)
    config.model.fusion.update(kind="concat", depth=1)
    config.model.scan = True
    config_lib.validate(config)
    config.model.fusion.update(kind="cross", layout="albef")
    for fmt in ("hf_blip", "hf_clip", "open_clip"):
        with pytest.raises(ValueError, match="params or safetensors") as e:
            export.check_fusion(fmt, config, {"fusion": {}, "text": {}})
        assert "\n" not in str(e.value)
    export.check_fusion("safetensors", config, {"fusion": {}})
    export.check_fusion("hf_clip", config, {"text": {}})     # BLIP's layout: the exporters decide
