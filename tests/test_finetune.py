"""Fine-tuning: a classification head, a tower loaded from another run and locked (LiT),
early stopping that keeps the best step."""

import json
import os

import jax
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax.checkpoint import Checkpointer
from mmjax.train.init_from import InitError
from mmjax.train.loop import train
from mmjax.train.setup import setup


def _tiny(c):
    c.model.update(scan=False, embed_dim=16)
    c.model.image.update(patch_size=7, width=32, depth=1, num_heads=2, mlp_dim=64)
    c.model.text.update(context_length=16, width=32, depth=1, num_heads=2, mlp_dim=64)
    c.train.update(batch_size=64, log_every=10, eval_every=10, checkpoint_every=10)
    c.optim.update(lr=1e-2, warmup_steps=5, weight_decay=0.0)
    c.eval.batch_size = 256
    return c


def _classify(steps=40, **early_stop):
    c = _tiny(config_lib.defaults())
    c.task = "classify"
    c.model.classify.update(tower="image", num_classes=10)
    c.train.update(steps=steps, early_stop=dict(metric="eval/classify/accuracy", mode="max",
                                                **early_stop))
    config_lib.validate(c)
    return c


def _params(workdir, config):
    run = setup(config, tokenizer=None, check_batch=False)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config, read_only=True)
    restored = ckpt.restore(run.abstract_state, params_only=True)
    ckpt.close()
    return jax.device_get(restored.state["params"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, data_dir):
    c = _tiny(config_lib.defaults())
    c.train.steps = 20
    workdir = str(tmp_path_factory.mktemp("clip"))
    train(c, workdir, data_dir)
    return workdir, c


def test_classification_head_learns_and_early_stopping_keeps_the_best(tmp_path, data_dir):
    config = _classify(patience=100)
    workdir = str(tmp_path / "run")
    results = train(config, workdir, data_dir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "eval/classify/accuracy" in r]
    accuracy = {r["step"]: r["eval/classify/accuracy"] for r in evals}
    assert max(accuracy.values()) > 0.25, accuracy         # 10 classes: chance is 0.1
    with open(os.path.join(workdir, "best.json")) as f:
        best = json.load(f)
    assert best["step"] == max(accuracy, key=accuracy.get) == results["best_step"]
    assert best["value"] == max(accuracy.values()) and not best["stopped"]
    # The kept params score what was logged at that step.
    c = _classify()
    c.init.source = os.path.join(workdir, "best")
    c.train.update(steps=1)
    c.optim.update(lr=0.0, warmup_steps=0)
    again = train(c, str(tmp_path / "check"), data_dir)
    assert again["eval/classify/accuracy"] == pytest.approx(best["value"], abs=1e-9)


def test_patience_stops_the_run_and_a_rerun_does_not_train_on(tmp_path, data_dir):
    config = _classify(steps=200, patience=1)
    config.optim.update(lr=0.0, warmup_steps=0)   # nothing improves after the first eval
    workdir = str(tmp_path / "run")
    results = train(config, workdir, data_dir)
    with open(os.path.join(workdir, "best.json")) as f:
        best = json.load(f)
    assert best == {**best, "step": 10, "since": 1, "stopped": True} and results["best_step"] == 10
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "20"
    train(config, workdir, data_dir)                 # the same command: stopped, nothing more
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "20"


def test_lit_image_tower_from_a_clip_run_locked(tmp_path, data_dir, clip_run):
    source, clip_config = clip_run
    config = _classify(steps=10)
    config.init.update(source=source, load=("image/*",))
    config.optim.frozen = ("image/*",)
    workdir = str(tmp_path / "run")
    train(config, workdir, data_dir)
    tuned, clip = _params(workdir, config), _params(source, clip_config)
    for a, b in zip(jax.tree.leaves(tuned["image"]), jax.tree.leaves(clip["image"])):
        np.testing.assert_array_equal(a, b)          # loaded, then locked: bitwise the CLIP tower
    assert np.abs(tuned["classifier"]["kernel"]).sum() > 0   # the head trained (zero at init)


def test_init_refuses_what_does_not_fit_naming_the_parameters(tmp_path, data_dir, clip_run):
    source, _ = clip_run
    config = _classify(steps=1)
    config.init.update(source=source, load=("*",))
    with pytest.raises(InitError, match="does not have: image_proj/kernel, logit_scale, text/"):
        train(config, str(tmp_path / "a"), data_dir)
    config = _classify(steps=1)
    config.model.image.width = 48
    config.init.update(source=source, load=("image/*",))
    with pytest.raises(InitError, match=r"image/cls_token: \(32,\) vs \(48,\) expected"):
        train(config, str(tmp_path / "b"), data_dir)
    config.init.update(load=("vision/*",))
    with pytest.raises(InitError, match="matches none of the source's parameters"):
        train(config, str(tmp_path / "c"), data_dir)


def test_init_from_an_rgb_source_names_image_channels_as_the_fix(tmp_path, data_dir, clip_run, capsys):
    """A gray model from an RGB source (as an imported open_clip model is): one line naming
    --config.data.image_channels=3; with it the tower loads, and a differing normalisation is
    said in the line that reports the load."""
    from mmjax import export
    config, _, params = export.read_checkpoint(clip_run[0])
    kernel = params["image"]["patch_embed"]["kernel"]      # [(p p 1), width]
    p = config.model.image.patch_size
    params["image"]["patch_embed"]["kernel"] = np.repeat(kernel.reshape(p, p, 1, -1), 3, axis=2).reshape(
        p * p * 3, -1) / 3
    config.data.image_channels = 3
    rgb = str(tmp_path / "rgb")
    export.save_params(rgb, config, params)
    tune = _classify(steps=1)
    tune.init.update(source=rgb, load=("image/*",))
    with pytest.raises(InitError) as refused:
        train(tune, str(tmp_path / "gray"), data_dir)
    message = str(refused.value)
    assert "--config.data.image_channels=3" in message and "\n" not in message, message
    tune.data.update(image_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    train(tune, str(tmp_path / "rgb_run"), data_dir)
    loaded = [line for line in capsys.readouterr().out.splitlines() if "parameter arrays from" in line]
    assert len(loaded) == 1 and "mean=(0.5, 0.5, 0.5)" in loaded[0] and \
        f"mean={tuple(config.data.mean)}" in loaded[0], loaded


def test_an_evaluator_the_model_cannot_serve_is_named_before_training(tmp_path, data_dir):
    config = _classify(steps=1)
    config.evals = {"zeroshot": dict(type="zeroshot", dataset="digit_captions")}
    with pytest.raises(config_lib.ConfigError, match="'zeroshot' needs a model with encode_image"):
        train(config, str(tmp_path / "run"), data_dir)
    # A CLIP model has an mlm_logits method, but without an MLM head it cannot run it.
    clip = _tiny(config_lib.defaults())
    clip.evals = {"mlm": dict(type="mlm", dataset="prose")}
    with pytest.raises(config_lib.ConfigError, match="'mlm' needs a model with mlm_logits"):
        train(clip, str(tmp_path / "clip"), data_dir)


def test_three_evaluators_each_write_at_their_own_steps(tmp_path, data_dir):
    """config.evals entries on different schedules: each at its multiples of `every`, all at
    the last step; eval/<name>/<metric> in metrics.jsonl."""
    c = _tiny(config_lib.defaults())
    c.train.update(steps=6, log_every=3, checkpoint_every=6)
    c.evals = {"zs": dict(type="zeroshot", dataset="digit_captions", split="test", every=2),
               "ret": dict(type="retrieval", dataset="digit_captions", split="test", every=3, ks=(1,)),
               "probe": dict(type="linear_probe", dataset="digit_captions", split="test", every=4,
                             max_train_examples=200, shots=(1,), seeds=1, l2_grid=(1e-3,))}
    workdir = str(tmp_path / "run")
    train(c, workdir, data_dir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = {name: [r["step"] for r in records if f"eval/{name}/top1" in r or f"eval/{name}/i2t_r1" in r]
             for name in c.evals}
    assert steps == {"zs": [2, 4, 6], "ret": [3, 6], "probe": [4, 6]}
    final = [r for r in records if r["step"] == 6 and "eval/zs/top1" in r][0]
    assert {"eval/zs/top5", "eval/ret/t2i_r1", "eval/probe/fewshot_1shot_top1"} <= final.keys()
