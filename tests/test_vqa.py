"""VQA-style fine-tuning: question tables (`mmjax data build --kind table` with image, question,
answer columns), the digit question table, and classify with model.classify.tower='fusion'."""

import io
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import export, sharding, tasks
from mmjax.data import build, digit_questions, sources
from mmjax.data.build import BuildError
from mmjax.train import init_from
from mmjax.train.setup import setup
from tiny_configs import TOKENIZER, tiny_batch, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _table(folder, header, rows, images=("a.png", "b.png", "c.png")):
    for index, name in enumerate(images):
        Image.fromarray(np.full((8, 8), 40 * index, np.uint8)).save(folder / name)
    path = folder / "questions.csv"
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return path


ROWS = [("a.png", "is it dark?", "yes", "train"), ("a.png", "what shape?", "circle", "train"),
        ("b.png", "is it dark?", "no", "train"), ("c.png", "what shape?", " square", "test")]


def test_a_question_table_builds_with_its_answers_as_the_classes(tmp_path):
    path = _table(tmp_path, ("image", "question", "answer", "split"), ROWS)
    data_dir = str(tmp_path / "data")
    summary = build.build(path, "qa", data_dir, kind="table", workers=1)
    assert summary["features"] == ["image", "text", "label"]
    assert summary["splits"] == {"test": 1, "train": 3} and summary["num_classes"] == 4
    dataset = sources.get("qa", data_dir)
    assert dataset.class_names == ("circle", "no", "square", "yes")   # sorted, stripped
    assert set(dataset.features) == {"image", "text", "label"}
    got = []
    for split in ("train", "test"):
        for record in dataset.records(data_dir, split):
            image = np.asarray(Image.open(io.BytesIO(record["image"])))
            got.append((int(image[0, 0]) // 40, bytes(record["text"]).decode(),
                        dataset.class_names[int(record["label"])], split))
    want = [("abc".index(i[0]), q, a.strip(), s) for i, q, a, s in ROWS]
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("header, rows, message", [
    (("image", "question"), [("a.png", "is it dark?")], r"has a 'question' column but no 'answer'"),
    (("image", "answer"), [("a.png", "yes")], r"has a 'answer' column but no 'question'"),
    (("question", "answer"), [("is it?", "yes")], r"has no image column"),
    (("image", "question", "answer"), [("a.png", "is it dark?", "")] * 2, r"answer column .* is empty"),
    (("image", "question", "answer"), [("a.png", "is it dark?", "yes"), ("nope.png", "is it?", "no")],
     r"row 2 \(nope\.png\) \(missing_file\)"),
])
def test_a_bad_question_table_is_one_line_naming_the_fix(tmp_path, header, rows, message):
    path = _table(tmp_path, header, rows)
    with pytest.raises(BuildError, match=message) as err:
        build.build(path, "qa", str(tmp_path / "data"), kind="table", workers=1)
    assert "\n" not in str(err.value)


def test_the_digit_questions_need_the_image_and_the_question():
    assert digit_questions.questions(7, 0) == [
        ("is this digit a seven?", "yes"), ("is this digit a eight?", "no"),
        ("is this digit even?", "no"), ("is this digit odd?", "yes"),
        ("is this digit greater than four?", "yes"), ("is this digit less than five?", "no"),
        ("what digit is this?", "seven")]
    answers_by_question = {}
    for label in range(10):
        for index in range(9):
            pairs = digit_questions.questions(label, index)
            answers = [a for _, a in pairs]
            assert answers.count("yes") == 3 and answers.count("no") == 3   # image alone: chance
            for question, answer in pairs:
                answers_by_question.setdefault(question, []).append(answer)
    for question, answers in answers_by_question.items():   # question alone: chance
        if question != "what digit is this?":
            assert answers.count("yes") == answers.count("no"), question


def _fusion_config(num_classes=2):   # 2: the ITM head's shape
    config = tiny_config("classify")
    config.model.classify.update(tower="fusion", num_classes=num_classes)
    return config


@pytest.fixture(scope="module")
def fused_classifier():
    config = _fusion_config()
    task = tasks.get(config, TOKENIZER)
    model = task.build_model()
    method, args = task.init_args(4)
    params = nn.unbox(model.init(jax.random.key(0), *args, method=method))["params"]
    rng = np.random.default_rng(1)   # the head starts at zero: give it weights
    params["classifier"] = {k: rng.normal(size=v.shape).astype(np.float32)
                            for k, v in params["classifier"].items()}
    return config, model, params


def test_the_head_reads_the_fused_first_token_that_itm_reads(fused_classifier):
    config, model, params = fused_classifier
    batch = tiny_batch(config, 4)
    logits = model.apply({"params": params}, batch["image"], batch["text"])
    assert logits.shape == (4, 2)
    fusion = model.fusion
    variables = {"params": params["fusion"]}
    image_tokens = fusion.apply(variables, batch["image"], method="image_features")[1]
    # the whole fused sequence's first row, through a numpy head
    hidden = fusion.apply(variables, batch["text"], image_tokens, method=lambda m, t, c: m.text.fused(t, c)[:, 0])
    head = params["classifier"]
    np.testing.assert_allclose(logits, np.asarray(hidden) @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-5)
    # the ITM head given the classifier's weights reads the same token
    itm = fusion.apply({"params": {**params["fusion"], "itm_head": head}}, image_tokens, batch["text"],
                       method="itm_logits")
    np.testing.assert_allclose(itm, logits, rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits, model.apply({"params": params}, batch["image"][::-1], batch["text"]))


def test_a_clip_itm_run_loads_into_the_fused_classifier_which_fits_a_batch(tmp_path):
    source = tiny_config("clip+itm")
    task = tasks.get(source, TOKENIZER)
    model = task.build_model()
    method, args = task.init_args(4)
    params = jax.device_get(nn.unbox(model.init(jax.random.key(3), *args, method=method))["params"])
    export.save_params(str(tmp_path / "itm"), source, params)

    config = _fusion_config()
    config.init.update(source=str(tmp_path / "itm"), load=("image/*", "text/*"), rename=(("", "fusion/"),))
    run = setup(config, tokenizer=TOKENIZER, devices=jax.devices()[:1])
    state, note = init_from.load_into(run, run.init_state())
    assert note.endswith(f"parameter arrays from {tmp_path / 'itm'}"), note
    # the loaded fused pass is the source model's
    batch = tiny_batch(config, 16)
    variables = {"params": params}
    want = model.apply(variables, model.apply(variables, batch["image"], method="image_features")[1],
                       batch["text"], method="fused_features")
    fusion = {"params": jax.device_get(state.params)["fusion"]}
    image_tokens = run.model.fusion.apply(fusion, batch["image"], method="image_features")[1]
    got = run.model.fusion.apply(fusion, image_tokens, batch["text"], method="fused_features")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # and it trains: a fixed batch of random labels is learnt
    batch["label"] = np.random.default_rng(0).integers(0, 2, 16).astype(np.int32)
    batch, step, losses = sharding.global_batch(batch, run.mesh), run.train_step(), []
    for _ in range(25):
        state, metrics = step(state, batch)
        losses.append(float(jax.device_get(metrics)["classify_loss"]))
    assert losses[-1] < 0.3 * losses[0], losses


def _train(*args, cwd):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()   # one device, as a user runs it
             if not f.startswith("--xla_force_host_platform_device_count")]
    done = subprocess.run([sys.executable, "-m", "mmjax.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": " ".join(flags)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.acceptance
def test_vqa_fine_tune_of_smoke_itm_beats_text_only_and_image_only(tmp_path):
    """configs/finetune_vqa_digits.py's three variants on the digit question table, from a
    smoke_itm run (MMJAX_SMOKE_ITM names a trained workdir; else one is trained here, ~20 min
    on 2 CPU cores): the fused model's test accuracy beats both single-tower classifiers."""
    data_dir = str(tmp_path / "data")
    digit_questions.write(str(tmp_path / "table"), data_dir)
    build.build(str(tmp_path / "table" / "questions.csv"), "digit_questions", data_dir, kind="table")
    itm = os.environ.get("MMJAX_SMOKE_ITM") or str(tmp_path / "smoke_itm")
    if not os.environ.get("MMJAX_SMOKE_ITM"):
        _train("train", "--config", os.path.join(ROOT, "configs/smoke_itm.py"), "--workdir", itm,
               "--data_dir", data_dir, cwd=tmp_path)
    accuracy = {}
    for tower in ("fusion", "text", "image"):
        workdir = tmp_path / tower
        _train("train", "--config", os.path.join(ROOT, f"configs/finetune_vqa_digits.py:{tower}"),
               "--workdir", str(workdir), "--data_dir", data_dir, f"--config.init.source={itm}",
               f"--config.data.vocab_file={itm}/vocab.txt", cwd=tmp_path)
        with open(workdir / "metrics.jsonl") as f:
            accuracy[tower] = [json.loads(line) for line in f if "eval/classify/accuracy" in line][-1][
                "eval/classify/accuracy"]
    print(accuracy)
    assert accuracy["fusion"] > max(accuracy["text"], accuracy["image"]) + 0.2, accuracy
