"""`mmjax export --format hf_blip`: a tiny random clip+itm(+mlm) model in BLIP's layout (one
channel, WordPiece, a post-LN BERT text tower) loads into transformers' own
BlipForImageTextRetrieval + BlipProcessor and gives the same ITM logits and cosine similarities
as mmjax on real digit images and captions; what BLIP cannot hold is refused in one line."""

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
from mmjax.convert import hf_blip, layout  # noqa: E402
from mmjax.data.sources import DIGIT_NAMES  # noqa: E402
from mmjax.data.tokenizers import WordPieceTokenizer  # noqa: E402
from conftest import made_once  # noqa: E402
from splits import digit_arrays  # noqa: E402
from tiny_configs import tiny_config  # noqa: E402

TOL = 1e-4
N = 12
# What BLIP's math needs of a fused model (the defaults build CLIP-style pre-LN towers).
BLIP_BUILT = dict(pre_norm=False, embed_norm=True, final_norm=False, type_vocab_size=0)


def blip_config(vocab_size, task="clip+itm+mlm"):
    config = tiny_config(task)
    config.data.update(image_size=28, tokenizer="wordpiece")
    config.model.image.update(patch_size=7, width=24, mlp_dim=48, ln_pre=False, patch_bias=True)   # its own width
    config.model.text.update(vocab_size=vocab_size, context_length=12, **BLIP_BUILT)
    config.model.fusion.update(kind="cross", layout="blip")
    return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder, mmjax Model, N test digits as uint8 [N, 28, 28], N captions)."""
    data_dir = made_once(tmp_path_factory, "digits_data", lambda folder: digit_arrays(str(folder), "test"))
    digits = digit_arrays(str(data_dir), "test")
    pick = np.random.default_rng(0).choice(len(digits["label"]), N, replace=False)
    photos = np.round((digits["image"][pick, ..., 0] + 1) * 127.5).astype(np.uint8)
    shuffled = np.random.default_rng(1).permutation(digits["label"][pick])   # mostly mismatched pairs
    captions = [f"a handwritten {DIGIT_NAMES[i]}." for i in shuffled]
    captions[:4] = [digits["caption"][i] for i in pick[:4]]
    vocab = WordPieceTokenizer.train([f"a photo of the digit {n}. a handwritten {n}." for n in DIGIT_NAMES] * 3, 90)
    config = blip_config(vocab.vocab_size)
    task = tasks.get(config, vocab)
    method, args = task.init_args()
    params = jax.jit(lambda rng: nn.unbox(task.build_model().init(rng, *args, method=method)["params"]))(
        jax.random.PRNGKey(0))
    params = jax.tree.map(np.asarray, params)
    rng = np.random.default_rng(2)   # a non-zero patch bias and ITM bias, as training leaves them
    for tree, name in ((params["image"]["patch_embed"], "bias"), (params["itm_head"], "bias")):
        tree[name] = rng.normal(size=tree[name].shape).astype(np.float32)
    out = str(tmp_path_factory.mktemp("hf_blip") / "blip")
    hf_blip.save(out, *export.to_reference("hf_blip", config, params), config)
    hf_blip.save_tokenizer(out, vocab, config)
    return out, Model(config, params, vocab, batch_size=N), photos, captions


@pytest.fixture(scope="module")
def theirs(exported):
    """transformers' own BlipForImageTextRetrieval and processor (AutoProcessor: BlipProcessor,
    RGB images of the grey digits) loaded from the folder, and the processed inputs."""
    out, _, photos, captions = exported
    model, info = BlipForImageTextRetrieval.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info   # every tensor in its place, none missing or left over
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, BlipProcessor)
    inputs = processor(images=[Image.fromarray(p, "L").convert("RGB") for p in photos], text=captions,
                       return_tensors="pt", padding="max_length", truncation=True)
    return model.eval(), processor, inputs


def _score(theirs, use_itm_head):
    model, _, inputs = theirs
    with torch.no_grad():
        return model(**inputs, use_itm_head=use_itm_head).itm_score.numpy()


def _relative(theirs, ours):
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


def test_itm_logits_equal_transformers_blip(exported, theirs):
    _, model, photos, captions = exported
    inputs = theirs[2]
    ids = model.tokenize(captions)
    mask = inputs["attention_mask"].numpy().astype(bool)
    assert np.array_equal(np.where(mask, inputs["input_ids"].numpy(), 0), ids)   # the same tokens
    image_tokens = model._batched("image_features", model.preprocess(list(photos)), index=1)
    ours = model._batched("itm_logits", image_tokens, ids)
    logits = _score(theirs, use_itm_head=True)   # [N, 2]
    print(f"ITM logits, relative difference to transformers: {_relative(logits, ours):.1e}")
    assert _relative(logits, ours) <= TOL, _relative(logits, ours)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1)[:, 1].numpy()
    assert np.abs(probs - model.match(list(photos), captions)).max() <= TOL
    assert np.ptp(ours[:, 1] - ours[:, 0]) > 1e-2   # the pairs are told apart (not a constant)


def test_contrastive_similarities_equal_transformers_blip(exported, theirs):
    _, model, photos, captions = exported
    cosine = _score(theirs, use_itm_head=False)   # [N, N]
    ours = model.encode_image(list(photos)) @ model.encode_text(captions).T
    print(f"cosine similarities, relative difference to transformers: {_relative(cosine, ours):.1e}")
    assert _relative(cosine, ours) <= TOL, _relative(cosine, ours)


def test_export_writes_blip_processor_files(theirs):
    processor = theirs[1]
    assert processor.image_processor.size == {"height": 28, "width": 28}
    assert list(processor.image_processor.image_mean) == [0.5] * 3
    assert processor.tokenizer.model_max_length == 12


@pytest.mark.parametrize("change, message", [
    (lambda c: c.model.text.update(pre_norm=True), r"model\.text\.pre_norm \(needs False"),
    (lambda c: c.model.image.update(ln_pre=True), r"model\.image\.ln_pre \(needs False"),
    (lambda c: c.model.fusion.update(layout="albef"), r"model\.fusion\.layout \(needs 'blip'"),
    (lambda c: c.model.fusion.update(kind="concat"), r"model\.fusion\.kind \(needs 'cross'"),
    (lambda c: c.data.update(tokenizer="bpe"), r"data\.tokenizer \(needs 'wordpiece'"),
    (lambda c: setattr(c, "task", "clip"), r"task \(needs 'clip\+itm'"),
    (lambda c: c.model.text.update(position="rotary"), r"holds learned position tables only.*model\.text\.position"),
])
def test_what_blip_cannot_hold_is_refused_in_one_line(change, message):
    config = blip_config(64)
    change(config)
    with pytest.raises(ValueError, match=message) as error:
        export.to_reference("hf_blip", config, {})   # the config alone decides
    assert "\n" not in str(error.value)


def test_import_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="export-only") as error:
        export.load("hf_blip", str(tmp_path))
    assert "\n" not in str(error.value)


def test_fused_params_survive_the_canonical_layout_round_trip():
    """layout.canonical fuses self-attention q/k/v only: the cross-attention's k / v read the image
    tokens (width 24, the text's 16), and `fit` (params / safetensors import, init_from) takes
    the canonical params back into the model's layout unchanged."""
    config = blip_config(64)
    flat = {n: np.zeros(s.shape, s.dtype) for n, s in export.abstract_params(config).items()}
    canonical = layout.canonical(flat)
    assert canonical["text/encoder/layers_0/cross_attn/k_kernel"].shape == (24, 2, 8)
    params, fresh = export.fit(config, canonical)
    assert fresh == [] and sorted(layout.flatten(params)) == sorted(flat)
