"""Evaluators against open_clip: a trained smoke CLIP exported to open_clip, run by open_clip's
own model and tokenizer, scores what mmjax's zeroshot and retrieval evaluators report; imported
back, `mmjax eval` on it gives the numbers of the run it came from."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from mmjax.convert import torch_io

torch = torch_io.import_torch()
import open_clip  # noqa: E402

from mmjax import cli, export  # noqa: E402
from mmjax.data import build  # noqa: E402
from mmjax.data.sources import DIGIT_NAMES  # noqa: E402
from conftest import made_once, run_mmjax  # noqa: E402
from splits import digit_arrays  # noqa: E402
from test_eval_metrics import recall_by_rank  # noqa: E402

PHOTOS_PER_CLASS = 20


@pytest.fixture(scope="module")
def trained(trained_smoke_clip, tmp_path_factory):
    """The smoke CLIP trained 60 steps (well above chance: class margins are not float noise),
    its open_clip export, and a 'my_photos' image folder of gray digit PNGs built into the
    data dir: (workdir, data_dir, export dir, photos [n, 28, 28] uint8, labels)."""
    workdir, data_dir = trained_smoke_clip
    digits = digit_arrays(str(data_dir), "test")
    pick = np.concatenate([np.flatnonzero(digits["label"] == c)[:PHOTOS_PER_CLASS] for c in range(10)])
    photos = np.round((digits["image"][pick, ..., 0] + 1) * 127.5).astype(np.uint8)
    # Into the session's shared data dir: written once, whichever xdist worker comes first.
    def build_my_photos(folder):
        for i, (photo, label) in enumerate(zip(photos, digits["label"][pick])):
            os.makedirs(folder / "photos" / DIGIT_NAMES[label], exist_ok=True)
            Image.fromarray(photo, "L").save(folder / "photos" / DIGIT_NAMES[label] / f"{i:04d}.png")
        build.build(str(folder / "photos"), "my_photos", str(data_dir), val_fraction=0, workers=1)
    made_once(tmp_path_factory, "my_photos", build_my_photos)
    out = str(tmp_path_factory.mktemp("export") / "open_clip")
    export.export(str(workdir), "open_clip", out)
    return str(workdir), str(data_dir), out, photos, digits["label"][pick]


EVALS = "zeroshot:my_photos,retrieval:digit_captions:test"


@pytest.fixture(scope="module")
def evaluated(trained):
    """`mmjax eval --evals EVALS` on the trained run: what the parity tests compare with."""
    workdir, data_dir, *_ = trained
    return run_mmjax("eval", "--workdir", workdir, "--data_dir", data_dir, "--evals", EVALS)


def _open_clip(out):
    return open_clip.create_model(f"local-dir:{out}").eval()


def _encode(model, images_nhwc, texts, context_length):
    """open_clip's normalised image and text features; gray images as 3 equal channels,
    scaled to [-1, 1] as the smoke config's data.mean = data.std = 0.5 do."""
    x = torch.from_numpy(np.float32(images_nhwc)).permute(0, 3, 1, 2).repeat(1, 3 // images_nhwc.shape[-1], 1, 1)
    tokens = open_clip.tokenize(texts, context_length=context_length)
    with torch.no_grad():
        zimg = model.encode_image(x, normalize=True).numpy()
        ztxt = model.encode_text(tokens, normalize=True).numpy()
    return zimg, ztxt


def test_zero_shot_top1_equals_open_clips_own_model_and_tokenizer(trained, evaluated):
    _, _, out, photos, labels = trained
    # open_clip: the folder names as class names, "a photo of a {}." (the image folder's default
    # template), its own tokenizer; class vector = normalised mean of normalised prompts.
    model = _open_clip(out)
    images = photos[..., None] / 127.5 - 1.0
    prompts = [f"a photo of a {name}." for name in sorted(DIGIT_NAMES)]
    zimg, classes = _encode(model, images, prompts, context_length=16)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    predicted = np.asarray(sorted(DIGIT_NAMES))[np.argmax(zimg @ classes.T, axis=1)]
    top1 = np.mean(predicted == np.asarray(DIGIT_NAMES)[labels])
    assert top1 > 0.3  # trained: well above chance (0.1)
    assert evaluated["eval/zeroshot_my_photos/top1"] == pytest.approx(top1, abs=1e-9)


def test_retrieval_recall_equals_a_brute_force_rank_on_open_clip_embeddings(trained, evaluated):
    """One (image, caption) row per image; the digits' captions repeat word for word, so image
    queries rank the 10 distinct captions (recall_by_rank: a rank per query, not mmjax's code)
    and R@1 < R@5: 100 equal rows no longer fill every top K."""
    _, data_dir, out, _, _ = trained
    digits = digit_arrays(data_dir, "test")
    zimg, ztxt = _encode(_open_clip(out), digits["image"], digits["caption"], context_length=16)
    captions = [str(c) for c in digits["caption"]]
    assert len(set(captions)) < len(captions)
    expected = recall_by_rank(zimg, ztxt, np.arange(len(captions)), captions, ks=(1, 5, 10))
    assert expected["i2t_r1"] > 0.3 and expected["i2t_r1"] < expected["i2t_r5"]
    for key, value in expected.items():
        assert evaluated[f"eval/retrieval_digit_captions/{key}"] == pytest.approx(value, abs=1e-9), key


def test_imported_open_clip_model_evaluates_as_the_run_it_came_from(trained, evaluated, tmp_path):
    _, data_dir, out, _, _ = trained
    new = str(tmp_path / "imported")
    assert cli.main(["import", "--format", "open_clip", "--src", out, "--workdir", new,
                     "--config", "configs/smoke_clip.py", "--data_dir", data_dir]) == 0
    original = evaluated
    imported = run_mmjax("eval", "--workdir", new, "--data_dir", data_dir, "--evals", EVALS)
    metrics = [k for k in original if k.startswith("eval/")]
    assert len(metrics) >= 6 and imported["step"] == 0
    for key in metrics:
        assert imported[key] == pytest.approx(original[key], abs=1e-9), key
    # The config's own evaluators (the 1-channel digits) run on the RGB model too.
    default = run_mmjax("eval", "--workdir", new, "--data_dir", data_dir)
    assert default["eval/zeroshot/top1"] > 0.3
