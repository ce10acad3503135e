"""`mmjax export --format hf_blip`: a fused model in BLIP's layout, built like BLIP's towers, is a
folder that transformers' `BlipForImageTextRetrieval` and `BlipProcessor` load as they are and
that scores real digit images and captions as mmjax does, through transformers' own
processor: the same ITM logits (`use_itm_head=True`) and the same cosine similarities
(`use_itm_head=False`). What BLIP cannot hold is refused in one line."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from mmjax.convert import torch_io

torch = torch_io.import_torch()
from transformers import AutoProcessor, BlipForImageTextRetrieval, BlipProcessor  # noqa: E402

from mmjax import export, tasks  # noqa: E402
from mmjax.api import Model  # noqa: E402
from mmjax.convert import hf_blip  # noqa: E402
from mmjax.data.sources import DIGIT_NAMES  # noqa: E402
from mmjax.data.tokenizers import WordPieceTokenizer  # noqa: E402
from splits import digit_arrays  # noqa: E402
from tiny_configs import tiny_config  # noqa: E402

TOL = 1e-4
BLIP_BUILT = dict(text=dict(pre_norm=False, embed_norm=True, final_norm=False, type_vocab_size=0,
                            causal=False, pool="first"),
                  image=dict(ln_pre=False, patch_bias=True))


def blip_config(vocab_size, task="clip+itm"):
    """A tiny fused model built like BLIP: 28-px one-channel digits, patch 7, image width 24
    (the text's is 16: the cross-attention reads another width)."""
    config = tiny_config(task)
    config.model.update(embed_dim=8)
    config.model.fusion.update(kind="cross", layout="blip")
    config.model.image.update(patch_size=7, width=24, depth=2, num_heads=2, mlp_dim=48, **BLIP_BUILT["image"])
    config.model.text.update(vocab_size=vocab_size, context_length=12, **BLIP_BUILT["text"])
    config.data.update(tokenizer="wordpiece", image_size=28)
    return config


def _random_params(config, tokenizer, seed=0):
    task = tasks.get(config, tokenizer)
    method, args = task.init_args()
    init = jax.jit(lambda rng: nn.unbox(task.build_model().init(rng, *args, method=method)["params"]))
    params = jax.tree.map(np.asarray, init(jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)   # biases and norms away from their 0 / 1 init
    return jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(x.dtype)
                        if x.ndim == 1 else x, params)


@pytest.fixture(scope="module")
def exported(trained_smoke_clip, tmp_path_factory):
    """(folder, mmjax Model, its module and params, 12 test digits as uint8, their captions)."""
    texts = [f"a photo of the digit {c}." for c in DIGIT_NAMES]
    vocab = WordPieceTokenizer.train(texts * 3 + ["a handwritten number"] * 3, 60)
    config = blip_config(vocab.vocab_size, "clip+itm+mlm")
    params = _random_params(config, vocab)
    assert "mlm_head" in params
    out = str(tmp_path_factory.mktemp("hf_blip") / "blip")
    hf_blip.save(out, *export.to_reference("hf_blip", config, params), config)
    hf_blip.save_tokenizer(out, vocab, config)
    digits = digit_arrays(trained_smoke_clip[1], "test")
    photos = np.round((digits["image"][:12, ..., 0] + 1) * 127.5).astype(np.uint8)
    captions = [texts[label] for label in digits["label"][:12]]
    module = tasks.get(config, vocab).build_model()
    return out, Model(config, params, vocab), module, params, photos, captions


def _theirs(out, photos, texts, use_itm_head):
    model = BlipForImageTextRetrieval.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, BlipProcessor)
    inputs = processor(images=[Image.fromarray(p, "L").convert("RGB") for p in photos], text=texts,
                       return_tensors="pt", padding="max_length", truncation=True, max_length=12)
    with torch.no_grad():
        output = model(**inputs, use_itm_head=use_itm_head)
    return inputs, output.itm_score.numpy()


def test_blip_gives_the_same_itm_logits_on_digits(exported):
    out, ours, module, params, photos, captions = exported
    captions = captions[:6] + captions[6:][::-1]          # matching and mismatched pairs
    inputs, logits = _theirs(out, photos, captions, use_itm_head=True)
    assert np.array_equal(inputs["input_ids"].numpy(), ours.tokenize(captions))
    _, image_tokens = module.apply({"params": params}, ours.preprocess(photos), method="image_features")
    mine = np.asarray(module.apply({"params": params}, image_tokens, ours.tokenize(captions),
                                   method="itm_logits"))
    assert logits.shape == mine.shape == (12, 2)
    np.testing.assert_allclose(logits, mine, rtol=TOL, atol=TOL * np.abs(mine).max())
    probs = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    np.testing.assert_allclose(probs, ours.match(photos, captions), atol=TOL)


def test_blip_gives_the_same_contrastive_similarities_on_digits(exported):
    out, ours, _, _, photos, captions = exported
    _, similarity = _theirs(out, photos, captions, use_itm_head=False)
    mine = ours.encode_image(photos) @ ours.encode_text(captions).T
    np.testing.assert_allclose(similarity, mine, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("change, message", [
    (dict(text=dict(pre_norm=True)), r"model\.text\.pre_norm \(needs False"),
    (dict(image=dict(ln_pre=True)), r"model\.image\.ln_pre \(needs False"),
    (dict(task="clip"), r"task \(needs 'clip\+itm'"),
    (dict(text=dict(position="rotary")), r"holds learned position tables only.*model\.text\.position"),
])
def test_what_blip_cannot_hold_is_refused_in_one_line(change, message):
    config = blip_config(64)
    config.model.text.update(**change.get("text", {}))
    config.model.image.update(**change.get("image", {}))
    config.task = change.get("task", config.task)
    with pytest.raises(ValueError, match=message):
        export.to_reference("hf_blip", config, {})
