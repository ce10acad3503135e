"""An open_clip export carries the run's image preprocessing, and an import reads it back: a
run normalised with CLIP's mean / std scores the same zero-shot in mmjax, in open_clip (its
own transforms, tokenizer and classifier code) and imported back into mmjax."""

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from mmjax.convert import torch_io

torch = torch_io.import_torch()
import open_clip  # noqa: E402

import mmjax  # noqa: E402
from mmjax import export  # noqa: E402
from mmjax.api import Model  # noqa: E402
from mmjax.convert import open_clip as open_clip_convert  # noqa: E402
from mmjax.data.sources import DIGIT_NAMES  # noqa: E402
from splits import digit_arrays  # noqa: E402

TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.")
TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16,
                                             "patch_size": 8},
             "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def clip_stats_run(trained_smoke_clip, tmp_path_factory):
    """The trained smoke CLIP (one channel) with OpenAI CLIP's mean / std in place of its 0.5, as a
    run of its own (step 0), its open_clip export, and the digits' test images as uint8."""
    workdir, data_dir = trained_smoke_clip
    config, _, params = export.read_checkpoint(workdir)
    config.data.update(mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
    folder = tmp_path_factory.mktemp("clip_stats")
    run, out = str(folder / "run"), str(folder / "open_clip")
    export.write_workdir(config, params, run, data_dir)
    export.export(run, "open_clip", out)
    photos = np.round((digit_arrays(data_dir, "test")["image"][..., 0] + 1) * 127.5).astype(np.uint8)
    labels = digit_arrays(data_dir, "test")["label"]
    return run, out, photos, labels


def _mmjax_top1(model, photos, labels):
    """Zero-shot top-1 from mmjax's own preprocessing and tokenizer; class vector = normalised
    mean of the normalised prompt embeddings (open_clip's rule)."""
    prompts = [t.format(c) for c in DIGIT_NAMES for t in TEMPLATES]
    classes = model.encode_text(prompts).reshape(len(DIGIT_NAMES), len(TEMPLATES), -1).mean(1)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    return np.mean(np.argmax(model.encode_image(list(photos)) @ classes.T, axis=1) == labels)


def _open_clip_top1(out, photos, labels):
    """Zero-shot top-1 by open_clip's own code: its local-dir loader and transforms, tokenizer
    and zero-shot classifier. Also returns the preprocessed images."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(model, tokenizer, DIGIT_NAMES, TEMPLATES)
        pixels = torch.stack([preprocess(Image.fromarray(p, "L")) for p in photos])
        logits = model.encode_image(pixels, normalize=True) @ classifier
    return np.mean(logits.argmax(1).numpy() == labels), pixels.permute(0, 2, 3, 1).numpy()


def test_clip_stats_run_scores_the_same_in_open_clip_and_imported_back(clip_stats_run):
    run, out, photos, labels = clip_stats_run
    source = mmjax.load(run)
    config, params, _ = export.load("open_clip", out)   # what `mmjax import` writes as the new run
    imported = Model(config, params, source.tokenizer)
    assert config.data.image_channels == 3
    # The pixels: open_clip's transforms make what mmjax's evaluators feed the model.
    theirs_top1, theirs_pixels = _open_clip_top1(out, photos, labels)
    ours_pixels = source.preprocess(photos[:50])
    np.testing.assert_allclose(theirs_pixels[:50], np.repeat(ours_pixels, 3, axis=-1), atol=1e-5)
    np.testing.assert_allclose(imported.preprocess(photos[:50]), theirs_pixels[:50], atol=1e-5)
    source_top1, imported_top1 = _mmjax_top1(source, photos, labels), _mmjax_top1(imported, photos, labels)
    assert abs(theirs_top1 - source_top1) <= 0.002 and abs(imported_top1 - source_top1) <= 0.002, \
        (source_top1, theirs_top1, imported_top1)


def test_export_writes_the_runs_preprocessing(clip_stats_run):
    run, out, _, _ = clip_stats_run
    with open(os.path.join(out, open_clip_convert.CONFIG_FILE)) as f:
        written = json.load(f)["preprocess_cfg"]
    # One channel: gray is normalised with the means of the RGB statistics, on all three channels.
    assert written["mean"] == pytest.approx([np.mean(open_clip.OPENAI_DATASET_MEAN)] * 3, abs=1e-7)
    assert written["std"] == pytest.approx([np.mean(open_clip.OPENAI_DATASET_STD)] * 3, abs=1e-7)
    assert written["size"] == 28
    assert (written["interpolation"], written["resize_mode"]) == ("bicubic", "shortest")
    # An RGB run's statistics go as they are.
    config, _, _ = export.read_checkpoint(run)
    config.data.image_channels = 3
    rgb = open_clip_convert.preprocess_config(config)
    assert rgb["mean"] == pytest.approx(open_clip.OPENAI_DATASET_MEAN) and \
        rgb["std"] == pytest.approx(open_clip.OPENAI_DATASET_STD)


def _open_clip_dir(folder, preprocess_cfg):
    """A tiny random open_clip model in open_clip's local-dir layout, with `preprocess_cfg`
    (None: the key left out, as model_cfg-only files have it)."""
    os.makedirs(folder)
    cfg = {"model_cfg": TINY_CLIP, **({"preprocess_cfg": preprocess_cfg} if preprocess_cfg is not None else {})}
    with open(os.path.join(folder, open_clip_convert.CONFIG_FILE), "w") as f:
        json.dump(cfg, f)
    torch.save(open_clip.model.CLIP(**TINY_CLIP).state_dict(), os.path.join(folder, open_clip_convert.WEIGHTS_FILE))
    return str(folder)


def test_import_takes_the_files_statistics_or_open_clips_defaults(tmp_path):
    given = _open_clip_dir(tmp_path / "given", {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    config, _, _ = export.load("open_clip", given, "configs/smoke_clip.py")  # its own: 0.5
    assert config.data.mean == pytest.approx((0.1, 0.2, 0.3)) and config.data.std == pytest.approx((0.4, 0.5, 0.6))
    assert mmjax.load(given).config.data.mean == config.data.mean  # mmjax.load reads the folder too
    # No preprocess_cfg: open_clip's loader uses its defaults, so the import does too.
    bare = _open_clip_dir(tmp_path / "bare", None)
    config, _, _ = export.load("open_clip", bare, "configs/smoke_clip.py")
    loaded = open_clip.create_model(f"local-dir:{bare}")
    assert config.data.mean == pytest.approx(loaded.visual.preprocess_cfg["mean"])
    assert config.data.std == pytest.approx(loaded.visual.preprocess_cfg["std"])


def test_an_explicit_override_wins_in_one_warning_line(tmp_path, caplog):
    given = _open_clip_dir(tmp_path / "given", {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    with caplog.at_level(logging.WARNING):
        config, _, _ = export.load("open_clip", given, None,   # the default base config
                                   ["--config.data.mean=(0.5, 0.5, 0.5)", "--config.train.steps=7"])
    assert config.data.mean == (0.5, 0.5, 0.5) and config.data.std == pytest.approx((0.4, 0.5, 0.6))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "data.mean=(0.5, 0.5, 0.5)" in lines[0] and "(0.1, 0.2, 0.3)" in lines[0], lines[0]
    # One the weights cannot take is refused naming the flag to drop.
    with pytest.raises(ValueError, match=r"patch_embed/kernel.*drop --config.data.image_channels: the open_clip"):
        export.load("open_clip", given, "configs/smoke_clip.py", ["--config.data.image_channels=1"])


def test_a_config_file_that_sets_the_mean_is_named_in_one_warning_line(tmp_path, caplog):
    given = _open_clip_dir(tmp_path / "given", {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    with caplog.at_level(logging.WARNING):
        export.load("open_clip", given, "configs/smoke_clip.py")   # it sets data.mean = std = 0.5
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "data.mean=(0.1, 0.2, 0.3) (not (0.5, 0.5, 0.5))" in lines[0], lines
    assert "configs/smoke_clip.py" in lines[0] and "data.std=" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        export.load("open_clip", given)   # the default base is not the user's word: no line
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_resize_mmjax_does_not_do_is_one_warning_line(tmp_path, caplog):
    folder = _open_clip_dir(tmp_path / "squash", {"interpolation": "bilinear", "resize_mode": "squash"})
    with caplog.at_level(logging.WARNING):
        export.load("open_clip", folder)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "bilinear" in lines[0] and "squash" in lines[0], lines
