"""`mmjax export --format hf_clip` / `hf_siglip`: folders transformers' CLIPModel / SiglipModel and
their processors load as they are. The trained smoke CLIP (one channel, CLIP's BPE) gives the
same embeddings and the same zero-shot top-1 through transformers' own processor (RGB images
of the grey digits, its tokenizer) as through `mmjax.load`; a tiny random model with what CLIP
lacks (a patch bias, WordPiece, quick_gelu, separate q/k/v) matches too; imported back it is
the same model. A SigLIP-built clip+mlm model (attention pooling, no image projection, text
read at the last position) matches SiglipModel on the digits (random weights here; trained,
in the acceptance test). What a format cannot hold is refused in one line."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from mmjax.convert import torch_io

torch = torch_io.import_torch()
from transformers import AutoProcessor, CLIPModel, CLIPProcessor, SiglipModel, SiglipProcessor  # noqa: E402

import mmjax  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax import export, tasks  # noqa: E402
from mmjax.api import Model  # noqa: E402
from mmjax.convert import hf_clip, hf_siglip  # noqa: E402
from mmjax.data.sources import DIGIT_NAMES  # noqa: E402
from mmjax.data.tokenizers import WordPieceTokenizer  # noqa: E402
from conftest import run_mmjax  # noqa: E402
from splits import digit_arrays  # noqa: E402
from tiny_configs import tiny_config  # noqa: E402

TOL = 1e-4
IMAGES = 300
TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.")


@pytest.fixture(scope="module")
def exported(trained_smoke_clip, tmp_path_factory):
    """The trained smoke CLIP's hf_clip export, its mmjax model, and IMAGES test digits as uint8."""
    workdir, data_dir = trained_smoke_clip
    out = str(tmp_path_factory.mktemp("hf_clip") / "clip")
    summary = export.export(workdir, "hf_clip", out)
    return out, mmjax.load(workdir), *_photos(data_dir), summary


def _photos(data_dir, n=IMAGES):
    """n test digits as uint8 [n, 28, 28] and their labels."""
    digits = digit_arrays(data_dir, "test")
    return np.round((digits["image"][:n, ..., 0] + 1) * 127.5).astype(np.uint8), digits["label"][:n]


def _theirs(out, photos, texts, model_class=CLIPModel, processor_class=CLIPProcessor):
    """(image embeddings, text embeddings, logits_per_image), L2-normalised, from transformers'
    own classes: AutoProcessor (RGB images of the grey digits) and the model. Texts are padded
    to the context length, as SigLIP's model card says (CLIP's pooling does not mind)."""
    model = model_class.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, processor_class)
    inputs = processor(text=texts, images=[Image.fromarray(p, "L").convert("RGB") for p in photos],
                       return_tensors="pt", padding="max_length", truncation=True)
    with torch.no_grad():
        output = model(**inputs)
    return output.image_embeds.numpy(), output.text_embeds.numpy(), output.logits_per_image.numpy()


def _top1(class_of_prompt, logits, labels):
    """Zero-shot top-1: each image's class is its best prompt's."""
    return float(np.mean(class_of_prompt[np.argmax(logits, axis=1)] == labels))


def test_trained_clip_gives_the_same_embeddings_and_zero_shot_in_transformers(exported):
    out, model, photos, labels, summary = exported
    assert summary["format"] == "hf_clip" and not summary["vocab"]
    prompts = [t.format(c) for c in DIGIT_NAMES for t in TEMPLATES]
    class_of_prompt = np.repeat(np.arange(len(DIGIT_NAMES)), len(TEMPLATES))
    zi, zt, logits = _theirs(out, photos, prompts)
    ours_i, ours_t = model.encode_image(list(photos)), model.encode_text(prompts)
    assert np.abs(zi - ours_i).max() <= TOL and np.abs(zt - ours_t).max() <= TOL
    theirs_top1 = _top1(class_of_prompt, logits, labels)
    ours_top1 = _top1(class_of_prompt, ours_i @ ours_t.T, labels)
    assert theirs_top1 == ours_top1 and ours_top1 > 0.3, (theirs_top1, ours_top1)   # chance: 0.1
    # The tokenizer: transformers' ids are mmjax's up to the end token (it pads with it, mmjax with 0).
    ids = AutoProcessor.from_pretrained(out)(text=prompts, padding="max_length")
    mask = np.asarray(ids["attention_mask"]).astype(bool)
    assert np.array_equal(np.where(mask, ids["input_ids"], 0), model.tokenize(prompts))


def test_export_writes_the_runs_preprocessing_as_rgb(exported):
    out, model, _, _, _ = exported
    with open(os.path.join(out, hf_clip.PREPROCESSOR_FILE)) as f:
        written = json.load(f)
    assert written["image_mean"] == [0.5] * 3 and written["image_std"] == [0.5] * 3
    assert written["size"] == {"shortest_edge": 28} and written["crop_size"] == {"height": 28, "width": 28}
    assert written["resample"] == 3   # bicubic, as mmjax's evaluation resize
    with open(os.path.join(out, hf_clip.CONFIG_FILE)) as f:
        text_config = json.load(f)["text_config"]
    assert text_config["eos_token_id"] == model.tokenizer.eot_id == 49407


def test_import_back_is_the_same_model(exported):
    out, model, photos, _, _ = exported
    imported = mmjax.load(out)   # a transformers CLIP directory: RGB, the folder's mean / std
    assert imported.config.data.image_channels == 3 and imported.config.data.tokenizer == "clip_bpe"
    rgb = [np.repeat(p[..., None], 3, axis=-1) for p in photos[:32]]
    assert np.abs(imported.encode_image(rgb) - model.encode_image(list(photos[:32]))).max() <= TOL
    texts = ["a photo of the digit seven.", "a handwritten 3."]
    assert np.abs(imported.encode_text(texts) - model.encode_text(texts)).max() <= TOL


def _random_params(config, tokenizer, seed=0):
    task = tasks.get(config, tokenizer)
    method, args = task.init_args()
    init = jax.jit(lambda rng: nn.unbox(task.build_model().init(rng, *args, method=method)["params"]))
    return jax.tree.map(np.asarray, init(jax.random.PRNGKey(seed)))


def test_what_clip_lacks_is_folded_or_carried(tmp_path):
    """RGB, a patch bias (folded into the positions), quick_gelu, WordPiece (CLIP pools at its
    [SEP]: eos_token_id), separate q/k/v kernels and a logit scale above mmjax's clamp."""
    vocab = WordPieceTokenizer.train(["a photo of the digit seven", "the quick brown fox jumps"] * 4, 48)
    config = tiny_config("clip")
    config.model.fused_qkv = False
    config.data.update(tokenizer="wordpiece", image_channels=3)
    config.model.image.update(patch_bias=True, activation="quick_gelu")
    config.model.text.update(vocab_size=vocab.vocab_size, context_length=12, activation="quick_gelu")
    params = _random_params(config, vocab)
    rng = np.random.default_rng(0)
    params["image"]["patch_embed"]["bias"] = rng.normal(size=params["image"]["patch_embed"]["bias"].shape)
    params["logit_scale"] = np.float32(6.0)
    out = str(tmp_path / "clip")
    hf_clip.save(out, *export.to_reference("hf_clip", config, params), config)
    hf_clip.save_tokenizer(out, vocab, config)
    model = CLIPModel.from_pretrained(out).eval()
    processor = CLIPProcessor.from_pretrained(out)
    ours = Model(config, params, vocab)
    photos = list(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    texts = ["a photo of the digit seven", "the quick fox!!", "zebra"]
    inputs = processor(text=texts, images=[Image.fromarray(p) for p in photos], return_tensors="pt",
                       padding="max_length", truncation=True)
    assert np.array_equal(inputs["input_ids"].numpy(), ours.tokenize(texts))
    with torch.no_grad():
        output = model(**inputs)
    assert np.abs(output.image_embeds.numpy() - ours.encode_image(photos)).max() <= TOL
    assert np.abs(output.text_embeds.numpy() - ours.encode_text(texts)).max() <= TOL
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100.0)   # mmjax's clamp


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.image.pool=mean"], r"model\.image\.pool \(needs 'cls'"),
    (["--config.model.image.ln_pre=False"], r"model\.image\.ln_pre \(needs True"),
    (["--config.model.text.position=rotary"], r"holds learned position tables only.*model\.text\.position"),
    (["--config.task=clip+mlm", "--config.model.text.causal=False", "--config.model.text.pool=first"],
     r"model\.text\.causal \(needs True.*model\.text\.pool \(needs 'eot'"),
])
def test_what_clip_cannot_hold_is_refused_in_one_line(overrides, message):
    config = config_lib.load("configs/smoke_clip.py", overrides)
    with pytest.raises(ValueError, match=message) as error:
        export.to_reference("hf_clip", config, {})   # the config alone decides
    assert "\n" not in str(error.value)


def test_an_end_token_transformers_reads_as_argmax_is_refused(tmp_path):
    specials = ["[PAD]", "[UNK]", "[SEP]", "[CLS]", "[MASK]", "a", "b"]   # [SEP] at id 2
    vocab = WordPieceTokenizer({t: i for i, t in enumerate(specials)})
    config = tiny_config("clip")
    with pytest.raises(ValueError, match=r"end-of-text id is 2.*argmax"):
        hf_clip.save_tokenizer(str(tmp_path), vocab, config)


SIGLIP_BUILT = ["--config.model.image_proj=False", "--config.model.image.pool=map", "--config.model.image.ln_pre=False",
                "--config.model.image.patch_bias=True", "--config.model.text.pool=last",
                "--config.model.contrastive_loss=sigmoid", "--config.model.init_logit_bias=-10.0"]


def _siglip_zero_shot(out, model, photos, labels):
    """Embeddings and zero-shot through SiglipModel + SiglipProcessor equal mmjax's: the top-1s."""
    prompts = [t.format(c) for c in DIGIT_NAMES for t in TEMPLATES]
    class_of_prompt = np.repeat(np.arange(len(DIGIT_NAMES)), len(TEMPLATES))
    zi, zt, logits = _theirs(out, photos, prompts, SiglipModel, SiglipProcessor)
    ours_i, ours_t = model.encode_image(list(photos)), model.encode_text(prompts)
    assert np.abs(zi - ours_i).max() <= TOL and np.abs(zt - ours_t).max() <= TOL
    theirs_top1, ours_top1 = _top1(class_of_prompt, logits, labels), _top1(class_of_prompt, ours_i @ ours_t.T, labels)
    assert theirs_top1 == ours_top1, (theirs_top1, ours_top1)
    return ours_top1


def test_a_siglip_built_clip_mlm_model_matches_siglip_on_the_digits(trained_smoke_clip, tmp_path):
    """Random weights: the clip+mlm smoke model built as SigLIP (its MLM head is left out)."""
    data_dir = trained_smoke_clip[1]   # its digits
    config = config_lib.load("configs/smoke_clip_mlm.py", SIGLIP_BUILT + [
        "--config.model.embed_dim=32", "--config.model.image.width=32", "--config.model.image.depth=1",
        "--config.model.image.num_heads=2", "--config.model.image.mlp_dim=64", "--config.model.text.width=32",
        "--config.model.text.depth=1", "--config.model.text.num_heads=2", "--config.model.text.mlp_dim=64"])
    vocab = WordPieceTokenizer.train([t.format(c) for c in DIGIT_NAMES for t in TEMPLATES] * 3, 120)
    config.model.text.vocab_size = vocab.vocab_size
    params = _random_params(config, vocab)
    assert "mlm_head" in params and "image_proj" not in params
    out = str(tmp_path / "siglip")
    hf_siglip.save(out, *export.to_reference("hf_siglip", config, params), config)
    hf_siglip.save_tokenizer(out, vocab, config)
    photos, labels = _photos(data_dir, 100)
    _siglip_zero_shot(out, Model(config, params, vocab), photos, labels)


@pytest.mark.acceptance
def test_trained_siglip_built_clip_mlm_scores_the_same_zero_shot_in_transformers(trained_smoke_clip, tmp_path):
    """`mmjax train` of the smoke CLIP+MLM built as SigLIP, exported with `mmjax export`."""
    workdir, out, data_dir = str(tmp_path / "run"), str(tmp_path / "siglip"), trained_smoke_clip[1]
    run_mmjax("train", "--config", "configs/smoke_clip_mlm.py", "--workdir", workdir, "--data_dir", data_dir,
              "--config.model.embed_dim=96", *SIGLIP_BUILT, "--config.train.steps=150", "--config.train.batch_size=64",
              "--config.train.log_every=150", "--config.train.eval_every=1000", "--config.optim.warmup_steps=10")
    run_mmjax("export", "--workdir", workdir, "--format", "hf_siglip", "--out", out)
    top1 = _siglip_zero_shot(out, mmjax.load(workdir, data_dir=data_dir), *_photos(data_dir))
    print(f"zero-shot top-1 on {IMAGES} test digits, mmjax and transformers: {top1:.3f}")
    assert top1 > 0.3


@pytest.mark.parametrize("overrides, message", [
    ([], r"model\.image\.pool \(needs 'map'.*model\.image\.ln_pre \(needs False.*model\.image_proj "
         r"\(needs False.*model\.text\.causal \(needs False.*model\.text\.pool \(needs 'last'.*data\.tokenizer"),
    (SIGLIP_BUILT + ["--config.model.text.causal=False", "--config.model.image.position=sinusoidal"],
     r"holds learned position tables only.*model\.image\.position"),
])
def test_what_siglip_cannot_hold_is_refused_in_one_line(overrides, message):
    config = config_lib.load("configs/smoke_clip.py", overrides)
    with pytest.raises(ValueError, match=message) as error:
        export.to_reference("hf_siglip", config, {})
    assert "\n" not in str(error.value)


def test_clip_refuses_a_siglip_built_model_in_one_line():
    config = config_lib.load("configs/smoke_clip.py", SIGLIP_BUILT)
    with pytest.raises(ValueError, match=r"model\.image\.pool \(needs 'cls'.*model\.image_proj \(needs True"):
        export.to_reference("hf_clip", config, {})
