"""A task, a dataset and an evaluator defined here, outside mmjax, train and evaluate through
`mmjax train`'s own code path, sharded over 8 simulated devices."""

import json
import os
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax.checkpoint import Checkpointer
from mmjax.data import pipeline
from mmjax.data.sources import DATASETS, Dataset
from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator
from mmjax.nn import options
from mmjax.nn.vit import ViT
from mmjax.data.images import ImageOptions
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task
from mmjax.train.loop import TrainingDiverged, train
from mmjax.train.setup import setup

SIZE = 8


def _brightness_split(split):
    """Random 8x8 grey images; the target is their mean brightness in [-1, 1]."""
    rng = np.random.default_rng({"train": 0, "test": 1}[split])
    n = {"train": 512, "test": 77}[split]   # 77: not a multiple of the 8 devices
    images = rng.integers(0, 256, (n, SIZE, SIZE, 1)).astype(np.uint8)
    images = (images * rng.uniform(0.1, 1.0, (n, 1, 1, 1))).astype(np.uint8)  # spread the means
    targets = images.astype(np.float32).mean(axis=(1, 2, 3)) / 127.5 - 1.0
    return [{"image": i, "target": t} for i, t in zip(images, targets)]


@DATASETS.register("toy_brightness")
class Brightness(Dataset):
    features = ("image",)

    def source(self, data_dir, split):
        return _brightness_split(split)   # a list: random access


@DATASETS.register("toy_stream")
class Stream(Dataset):
    """The same records, streamed (an iterable with no length)."""
    random_access = False
    features = ("image",)

    def source(self, data_dir, split):
        return Records(split)


class Records:
    """An iterable that reads the split afresh on each pass, like a list of shard files."""

    def __init__(self, split):
        self.split = split

    def __iter__(self):
        return iter(_brightness_split(self.split))


class Regressor(nn.Module):
    """A linear head on the pooled image tower."""
    image: options.ViTOptions

    @nn.compact
    def __call__(self, images):   # [b, H, W, C] -> [b]
        return nn.Dense(1, name="head")(ViT(self.image, name="image")(images))[:, 0]


@TASKS.register("toy_regression")
class ToyRegression(Task):
    def build_model(self):
        return Regressor(options.from_config(self.config.model, "image"))

    def batch_spec(self):
        return {"image": jax.ShapeDtypeStruct((SIZE, SIZE, 1), np.float32),
                "target": jax.ShapeDtypeStruct((), np.float32)}

    def init_args(self, batch_size=1):
        return "__call__", (self.example_batch(batch_size)["image"],)

    def loss_terms(self, model, mesh):
        def mse(params, batch, rng):
            error = model.apply({"params": params}, batch["image"]) - batch["target"]
            return (error ** 2).mean(), {}
        return {"mse": ExampleTerm(mse)}

    def default_evals(self):
        return {"held_out": dict(type="toy_mse", dataset="toy_brightness")}


@EVALUATORS.register("toy_mse")
class HeldOutMse(Evaluator):
    def _predict(self, params, batch, index):
        return {"pred": self.apply(params, (batch["image"],), None), "target": batch["target"]}

    def run(self, params):
        out = self.map_split(self._predict, params, ToyRegression.batch_spec(self))
        return {"mse": float(np.mean((out["pred"] - out["target"]) ** 2)), "count": len(out["pred"])}


def _config():
    c = config_lib.defaults()
    c.task = "toy_regression"
    c.data.update(train="toy_brightness", image_size=SIZE, image_channels=1, crop="resize",
                  mean=(0.5,) * 3, std=(0.5,) * 3)
    c.model.update(scan=False)
    c.model.image.update(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32)
    c.mesh.update(data=2, fsdp=4)
    c.train.update(steps=60, batch_size=32, log_every=20, eval_every=30, checkpoint_every=30)
    c.optim.update(lr=3e-3, warmup_steps=5, weight_decay=0.0)
    c.eval.batch_size = 16
    config_lib.validate(c)
    return c


def test_a_task_dataset_and_evaluator_from_outside_mmjax_train_sharded(tmp_path):
    config = _config()
    workdir = str(tmp_path / "run")
    results = train(config, workdir, str(tmp_path / "data"))
    assert jax.device_count() == 8
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = [r for r in records if "eval/held_out/mse" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert [r["train/mse_loss"] for r in records if "train/mse_loss" in r]  # the term is logged
    # Every held-out example counted once, though 77 does not split over 8 devices.
    assert results["eval/held_out/count"] == 77
    # The evaluator equals a plain numpy computation on the restored params, unsharded.
    single = _config()
    single.mesh.update(data=1, fsdp=1)
    run = setup(single, tokenizer=None, devices=jax.devices()[:1])
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), single, read_only=True)
    params = jax.device_get(ckpt.restore(run.abstract_state, params_only=True).state["params"])
    ckpt.close()
    test = _brightness_split("test")
    images = np.stack([r["image"] for r in test]).astype(np.float32) / 127.5 - 1.0
    targets = np.array([r["target"] for r in test])
    pred = np.asarray(run.model.apply({"params": params}, images))
    assert results["eval/held_out/mse"] == pytest.approx(np.mean((pred - targets) ** 2), rel=1e-4)
    # ... and it learnt: better than predicting the training mean.
    mean = np.mean([r["target"] for r in _brightness_split("train")])
    assert results["eval/held_out/mse"] < 0.5 * np.mean((targets - mean) ** 2)


def test_plug_ins_can_be_named_by_import_path():
    assert TASKS.get("test_plugins:ToyRegression") is ToyRegression
    config = _config()
    config.task = "test_plugins:ToyRegression"
    config_lib.validate(config)
    config.task = "test_plugins:Missing"
    with pytest.raises(config_lib.ConfigError, match="cannot be imported"):
        config_lib.validate(config)


def _stream(process_index=0, process_count=1, state=None):
    it = pipeline.batches("toy_stream", data_dir=None, split="train", tokenizer=None,
                          spec=ToyRegression.batch_spec(None), batch_size=24, seed=0,
                          process_index=process_index, process_count=process_count,
                          image_options=ImageOptions(size=SIZE, channels=1, crop="resize"))
    if state is not None:
        it.set_state(state)
    return it


def test_a_streamed_dataset_shards_and_resumes_exactly():
    it = _stream()
    for _ in range(25):   # 512 / 24: crosses the epoch end
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    again = _stream(state=state)
    for a in want:
        b = next(again)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["target"], b["target"])
    halves = [next(_stream(p, 2))["target"] for p in range(2)]
    records = _brightness_split("train")
    np.testing.assert_array_equal(halves[0], [r["target"] for r in records[0:24:2]])
    np.testing.assert_array_equal(halves[1], [r["target"] for r in records[1:24:2]])


@DATASETS.register("toy_nan")
class NanTargets(Dataset):
    """Brightness images whose targets are all NaN: every gradient is non-finite."""
    features = ("image",)

    def source(self, data_dir, split):
        return [{**r, "target": np.float32("nan")} for r in _brightness_split(split)]


def test_a_run_whose_updates_are_all_non_finite_stops_and_keeps_finite_checkpoints(tmp_path):
    config = _config()
    config.data.train = "toy_nan"
    config.train.update(steps=40, log_every=15, checkpoint_every=10)
    config.optim.max_skipped_steps = 10
    workdir = str(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="step 15: the last 15 updates had non-finite"):
        train(config, workdir, str(tmp_path / "data"))
    run = setup(config, tokenizer=None)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config, read_only=True)
    restored = ckpt.restore(run.abstract_state)
    ckpt.close()
    assert restored.step == 10
    fresh = jax.device_get(run.init_state().params)
    saved = jax.device_get(restored.state.params)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(a, b)   # skipped updates never touched the params


def test_a_streamed_position_resumes_only_on_as_many_processes():
    from mmjax.checkpoint import CheckpointError, data_state_for
    states = [_stream(p, 2).get_state().decode() for p in range(2)]
    assert data_state_for({"iterators": states}, 1, 2) == states[1].encode()
    with pytest.raises(CheckpointError, match="written by 2 processes reading a streamed dataset"):
        data_state_for({"iterators": states}, 0, 4)


def test_retrieval_recall_with_several_captions_per_image_by_hand():
    """Images A, B with two captions each. A's captions: a1 near A, a2 nearer B; B's: b1 near
    B, b2 nearer A. Image queries: A's best text a1, B's best b1: i2t R@1 = 1. Text queries:
    a1 -> A right, a2 -> B wrong, b1 -> B right, b2 -> A wrong: t2i R@1 = 1/2; at K = 2
    every query is right."""
    from mmjax.eval.retrieval import image_identity, recall_at_k
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
    image_of_text, first = image_identity(np.array([[3.0, 1.0], [3.0, 1.0], [2.0, 5.0], [2.0, 5.0]]))
    assert image_of_text.tolist() == [0, 0, 1, 1] and first.tolist() == [0, 2]
    got = recall_at_k(images, texts, image_of_text, ["a1", "a2", "b1", "b2"], ks=(1, 2))
    assert got == {"i2t_r1": 1.0, "t2i_r1": 0.5, "i2t_r2": 1.0, "t2i_r2": 1.0}
    # Word-for-word equal captions are one answer: if b2 reads "a1", it is right for A.
    same = recall_at_k(images, texts, image_of_text, ["a1", "a2", "b1", "a1"], ks=(1,))
    assert same == {"i2t_r1": 1.0, "t2i_r1": 0.75}


class EvaluatorFailed(RuntimeError):
    pass


@EVALUATORS.register("toy_failing")
class Failing(Evaluator):
    """Raises at every evaluation: a broken evaluator, or one whose dataset went missing."""

    def run(self, params):
        raise EvaluatorFailed("evaluation failed")


def test_a_failing_evaluator_loses_no_checkpoint_not_even_the_last(tmp_path):
    config = _config()
    config.train.update(steps=20, log_every=10, eval_every=20, checkpoint_every=20)
    config.evals = {"broken": dict(type="toy_failing", dataset="toy_brightness")}
    workdir = str(tmp_path / "run")
    with pytest.raises(EvaluatorFailed):
        train(config, workdir, str(tmp_path / "data"))
    run = setup(config, tokenizer=None)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config, read_only=True)
    restored = ckpt.restore(run.abstract_state)
    ckpt.close()
    assert restored.step == 20 and int(restored.state.step) == 20   # the final step, saved


@EVALUATORS.register("toy_slow")
class Slow(HeldOutMse):
    """The held-out MSE, after a pause as long as a big evaluation set's."""
    seconds = 4.0

    def run(self, params):
        time.sleep(self.seconds)
        return super().run(params)


def test_examples_per_second_leave_out_evaluation_and_checkpointing(tmp_path):
    """Steps 11-20 follow an evaluation (4 s asleep) and a save at step 10: their rate is the
    training's, so their time is well under the sleep (training 10 toy steps takes ~0.1 s)."""
    config = _config()
    config.train.update(steps=20, log_every=10, eval_every=10, checkpoint_every=10)
    config.evals = {"slow": dict(type="toy_slow", dataset="toy_brightness")}
    workdir = str(tmp_path / "run")
    train(config, workdir, str(tmp_path / "data"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = {r["step"]: r["train/examples_per_s"] for r in map(json.loads, f)
                 if "train/examples_per_s" in r}
    seconds_for_steps_11_to_20 = 10 * config.train.batch_size / rates[20]
    assert seconds_for_steps_11_to_20 < Slow.seconds, rates


def test_train_profile_writes_a_trace_of_the_chosen_steps(tmp_path):
    """train.profile: a JAX profiler trace (xplane.pb) under WORKDIR/tensorboard, for
    TensorBoard's profile plugin; the run is otherwise unchanged."""
    config = _config()
    config.train.update(steps=8, log_every=4, eval_every=0, checkpoint_every=8)
    config.train.profile.update(start_step=3, steps=2)
    workdir = tmp_path / "run"
    train(config, str(workdir), str(tmp_path / "data"))
    traces = list((workdir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000, traces
