"""The `linear_probe` evaluator: logistic regression against scikit-learn, ridge against numpy,
few-shot sampling, and the evaluator end to end on a tiny CLIP over real digits."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mmjax import eval as evaluators
from mmjax.api import Model
from mmjax.data import builders, sources
from mmjax.eval import linear_models
from mmjax.eval.linear_probe import probe_metrics, subset
from mmjax.train.setup import setup
from tiny_configs import TOKENIZER, tiny_config


def _blobs(n, dims, classes, spread, seed):
    """(x [n, dims], labels [n]): Gaussian blobs of unit variance, centres `spread` apart."""
    rng = np.random.default_rng(seed)
    centres = spread * np.eye(classes, dims)
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(size=(n, dims))).astype(np.float32), labels


def test_logistic_probe_separates_far_apart_blobs():
    x, y = _blobs(400, 16, 3, spread=12.0, seed=0)
    logits, l2, val_top1 = linear_models.logistic_probe(
        x[:200], y[:200], x[200:], num_classes=3, l2_grid=(1e-4, 1e-2, 1.0))
    assert logits.shape == (200, 3)
    assert linear_models.topk_accuracy(logits, y[200:]) == 1.0
    assert set(val_top1) == {1e-4, 1e-2, 1.0} and val_top1[l2] == max(val_top1.values())


def test_logistic_fit_matches_scikit_learn_with_c_equal_1_over_n_l2():
    """Our objective mean CE + l2/2 ||w||^2 is sklearn's C * sum CE + ||w||^2 / 2 divided by
    C * n, so the two share their minimum when C = 1 / (n * l2)."""
    x, y = _blobs(1200, 16, 3, spread=1.0, seed=1)   # overlapping: ~0.6 accuracy
    # 200 x 16 train rows and 3 classes, as above: the same compiled solver.
    train_x, train_y, test_x, test_y = x[:200], y[:200], x[200:], y[200:]
    n, l2 = len(train_y), np.float32(1e-2)
    params = linear_models.fit_logistic(jnp.asarray(train_x), jnp.asarray(train_y, jnp.int32),
                                        jnp.ones(n), l2, num_classes=3, max_iter=300)
    ours = linear_models.topk_accuracy(linear_models.logistic_logits(params, test_x), test_y)
    reference = LogisticRegression(C=1 / (n * l2), tol=1e-8, max_iter=5000).fit(train_x, train_y)
    theirs = reference.score(test_x, test_y)
    assert 0.45 < theirs < 0.9 and abs(ours - theirs) <= 0.02
    # Same minimum: sklearn's solution does not beat ours on our objective.
    objective = lambda p: float(linear_models.logistic_objective(
        p, jnp.asarray(train_x), jnp.asarray(train_y), jnp.ones(n), l2))
    sk_params = {"w": jnp.asarray(reference.coef_.T, jnp.float32),
                 "b": jnp.asarray(reference.intercept_, jnp.float32)}
    assert objective(params) <= objective(sk_params) + 1e-5
    np.testing.assert_allclose(params["w"], reference.coef_.T, atol=2e-3)


@pytest.mark.parametrize("n, d", [(60, 12), (8, 20)])   # primal and dual closed forms
def test_ridge_fit_equals_numpy_least_squares(n, d):
    rng = np.random.default_rng(2)
    x, targets, l2 = rng.normal(size=(n, d)), rng.normal(size=(n, 3)), 0.7
    ours = np.asarray(linear_models.ridge_fit(jnp.asarray(x, jnp.float32),
                                              jnp.asarray(targets, jnp.float32), l2))
    # min ||x w - t||^2 + l2 ||w||^2 is least squares on x stacked over sqrt(l2) I.
    stacked_x = np.concatenate([x, np.sqrt(l2) * np.eye(d)])
    stacked_t = np.concatenate([targets, np.zeros((d, 3))])
    reference = np.linalg.lstsq(stacked_x, stacked_t, rcond=None)[0]
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_fewshot_indices_take_k_per_class_per_seed():
    labels = np.repeat(np.arange(5), [30, 30, 30, 30, 3])   # class 4 has only 3 examples
    picks = linear_models.fewshot_indices(labels, 10, seed=0)
    assert np.bincount(labels[picks]).tolist() == [10, 10, 10, 10, 3]
    assert len(set(picks.tolist())) == len(picks)
    np.testing.assert_array_equal(picks, linear_models.fewshot_indices(labels, 10, seed=0))
    assert not np.array_equal(picks, linear_models.fewshot_indices(labels, 10, seed=1))
    fewer = linear_models.fewshot_indices(labels, 5, seed=0)   # nested in the 10-shot sample
    assert set(fewer.tolist()) <= set(picks.tolist())


def _numpy_fewshot_top1(x, labels, test_x, test_labels, l2, classes):
    """big_vision's few-shot ridge in float64 numpy: standardise, constant feature 100,
    {-1, 1} one-hot targets, (f^T f + l2 I)^-1 f^T t."""
    mean, std = x.mean(0), x.std(0) + 1e-5
    features = lambda z: np.concatenate([(z - mean) / std, np.full((len(z), 1), 100.0)], 1)
    f, targets = features(np.float64(x)), 2 * np.eye(classes)[labels] - 1
    w = np.linalg.solve(f.T @ f + l2 * np.eye(f.shape[1]), f.T @ targets)
    return np.mean((features(np.float64(test_x)) @ w).argmax(1) == test_labels)


def test_fewshot_ridge_follows_big_vision_protocol():
    x, y = _blobs(700, 16, 4, spread=3.0, seed=3)
    got = linear_models.fewshot_top1(x[:500], y[:500], x[500:], y[500:], shots=(2, 10),
                                     seeds=(0, 1, 2), l2=1024.0, num_classes=4)
    for k in (2, 10):
        picks = [linear_models.fewshot_indices(y[:500], k, seed) for seed in (0, 1, 2)]
        expected = np.mean([_numpy_fewshot_top1(x[p], y[p], x[500:], y[500:], 1024.0, 4)
                            for p in picks])
        assert got[k] == pytest.approx(expected, abs=1e-6)
    assert 0.3 < got[2] < got[10] < 1.0
    blobs, labels = _blobs(700, 4, 4, spread=12.0, seed=3)   # far apart: one shot suffices
    assert linear_models.fewshot_top1(blobs[:500], labels[:500], blobs[500:], labels[500:],
                                      shots=(1,), seeds=(0, 1), l2=1024.0,
                                      num_classes=4) == {1: 1.0}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(data_dir, run, random params) of a tiny CLIP on 8 devices over digit_captions."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    builders.prepare("digit_captions", data_dir)
    config = tiny_config("clip")
    config.mesh.update(data=2, fsdp=4)
    config.evals = {"probe": dict(type="linear_probe", dataset="digit_captions", split="test",
                                  max_train_examples=500, batch_size=200, shots=(1, 5))}
    run = setup(config, tokenizer=TOKENIZER)
    rng = np.random.default_rng(0)   # random weights of the params' shapes (no init compile)
    params = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype),
                          run.abstract_state.params)
    return data_dir, run, params


def test_linear_probe_end_to_end_fits_the_encode_image_embeddings(digits):
    data_dir, run, params = digits
    probe = evaluators.build(run, data_dir)["probe"]
    encoded, encode = {}, probe.features   # records the features `run` fits on
    probe.features = lambda params, split, limit=None: encoded.setdefault(
        split, encode(params, split, limit))
    metrics = probe.run(params)
    assert set(metrics) == {"top1", "top5", "l2", "fewshot_1shot_top1", "fewshot_5shot_top1",
                            "n", "n_test", "n_train"}
    assert metrics["n"] == metrics["n_test"] == 1000 and metrics["n_train"] == 500
    metrics = {k: v for k, v in metrics.items() if not k.startswith("n")}
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "l2")
    assert metrics["l2"] in probe.l2_grid and metrics["top5"] >= metrics["top1"]
    # The train rows: encode_image of the split's records, a seeded subset of 500 of 4000.
    train_z, train_y, train_ids = encoded["train"]
    rows = subset(4000, 500, seed=0)
    np.testing.assert_array_equal(train_ids, rows)
    records = list(sources.get("digit_captions").records(data_dir, "train"))
    direct = Model(run.config, params, TOKENIZER, batch_size=100).encode_image(
        [records[i]["image"] for i in rows])
    assert train_z.shape == (500, 16) and sorted(set(train_y.tolist())) == list(range(10))
    np.testing.assert_allclose(train_z, direct, atol=1e-5)
    np.testing.assert_array_equal(train_y, [records[i]["label"] for i in rows])
    test_z, test_y, test_ids = encoded["test"]
    np.testing.assert_array_equal(test_ids, np.arange(1000))
    assert test_z.shape == (1000, 16) and np.bincount(test_y).tolist() == [100] * 10
    refit = probe_metrics(direct, train_y, test_z, test_y, num_classes=10, l2_grid=probe.l2_grid,
                          val_fraction=0.2, max_iter=300, shots=(1, 5),
                          seeds=[(0, 0), (0, 1), (0, 2)], fewshot_l2=1024.0, seed=0,
                          train_ids=rows)
    assert metrics == pytest.approx(refit, abs=0.005)


def test_held_out_rows_and_fewshot_samples_follow_the_example_ids_not_the_row_order():
    """The same examples in another row order (as another process count used to gather them)
    draw the same held-out examples and few-shot samples, so the metrics agree."""
    x, y = _blobs(300, 8, 4, spread=2.0, seed=4)
    ids = np.random.default_rng(5).choice(4000, 300, replace=False)   # a subset's record ids
    shuffled = np.random.default_rng(6).permutation(300)
    held = linear_models.held_out_mask(300, 0.2, 0, ids)
    again = linear_models.held_out_mask(300, 0.2, 0, ids[shuffled])
    assert held.sum() == 60 and set(ids[held]) == set(ids[shuffled][again])
    assert set(ids[held]) != set(ids[linear_models.held_out_mask(300, 0.2, 1, ids)])
    for seed in (0, (0, 1)):
        picks = linear_models.fewshot_indices(y, 5, seed, ids)
        assert np.bincount(y[picks]).tolist() == [5] * 4
        assert set(ids[picks]) == set(ids[shuffled][linear_models.fewshot_indices(
            y[shuffled], 5, seed, ids[shuffled])])
        assert set(ids[linear_models.fewshot_indices(y, 2, seed, ids)]) <= set(ids[picks])
    args = dict(num_classes=4, l2_grid=(1e-3, 1.0), val_fraction=0.2, max_iter=100,
                shots=(1, 5), seeds=[(0, 0), (0, 1)], fewshot_l2=1024.0, seed=0)
    one = probe_metrics(x, y, x[:50], y[:50], train_ids=ids, **args)
    other = probe_metrics(x[shuffled], y[shuffled], x[:50], y[:50], train_ids=ids[shuffled], **args)
    assert {k: v for k, v in one.items() if "fewshot" in k} == {
        k: v for k, v in other.items() if "fewshot" in k}
    assert one == pytest.approx(other, abs=1e-6)


def _probe_on(processes, data_dir, log_dir):
    """The linear-probe metrics of tests/linear_probe_processes.py on `processes` processes x
    (4 / processes) CPU devices, joined with jax.distributed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
        flags + [f"--xla_force_host_platform_device_count={4 // processes}"]))
    script = pathlib.Path(__file__).parent / "linear_probe_processes.py"
    logs = [pathlib.Path(log_dir) / f"p{processes}.{i}.log" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, str(script), data_dir, f"127.0.0.1:{port}",
                               str(processes), str(i)], env=env, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT) for i, log in enumerate(logs)]
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    return json.loads(logs[0].read_text().strip().splitlines()[-1])


@pytest.mark.slow
def test_linear_probe_metrics_are_the_same_on_one_two_and_four_processes(digits, tmp_path):
    """Each process encodes its share of each global batch; gathered, the rows come in the
    split's order, and the held-out rows and few-shot samples are drawn by example index, so
    1, 2 and 4 processes (4 devices in all) report the same metrics."""
    data_dir = digits[0]
    runs = {p: _probe_on(p, data_dir, tmp_path) for p in (1, 2, 4)}
    assert [(r.pop("processes"), r.pop("devices")) for r in runs.values()] == [(1, 4), (2, 4), (4, 4)]
    assert 0.2 < runs[1]["top1"] < 1.0    # the random tower's features carry some signal
    for p in (2, 4):
        assert runs[p] == pytest.approx(runs[1], abs=1e-6), p
    assert runs[1]["n"] == 1000 and runs[1]["n_train"] == 300
