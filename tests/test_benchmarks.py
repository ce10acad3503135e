"""The benchmark harness runs a tiny config end to end, and its FLOPs formula matches a count of the step's matmuls."""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.extend.core as jex
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import train_step, workload  # noqa: E402
from mmjax import config as config_lib  # noqa: E402
from mmjax import sharding  # noqa: E402
from mmjax.train.setup import setup  # noqa: E402

TINY = {
    "bench_mlm_s": ["--config.model.text.vocab_size=1200", "--config.model.text.context_length=16",
                    "--config.model.text.width=32", "--config.model.text.depth=2",
                    "--config.model.text.num_heads=2", "--config.model.text.mlp_dim=64",
                    "--config.model.mlm.max_predictions=3", "--config.train.batch_size=8"],
    "bench_clip_s": ["--config.model.text.vocab_size=1200", "--config.model.text.context_length=8",
                     "--config.model.text.width=32", "--config.model.text.depth=2",
                     "--config.model.text.num_heads=2", "--config.model.text.mlp_dim=64",
                     "--config.model.image.width=32", "--config.model.image.depth=2",
                     "--config.model.image.num_heads=2", "--config.model.image.mlp_dim=64",
                     "--config.data.image_size=16", "--config.model.embed_dim=16",
                     "--config.train.batch_size=8"],
}
KEYS = ("config", "unit", "throughput", "step_time_s", "step_time_min_s", "step_time_max_s",
        "compile_s", "flops_per_step", "achieved_flops", "peak_flops", "mfu", "peak_rss_mb",
        "peak_device_mb")


def load(name, extra=()):
    return config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"), [*TINY[name], *extra])


def dot_flops(jaxpr):
    """2·(batch)·(lhs free)·(rhs free)·(contracted) summed over every dot_general, scan bodies
    counted `length` times."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            rhs_free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
            total += 2 * math.prod(lhs) * math.prod(rhs_free)
        times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for sub in jex.jaxprs_in_params(eqn.params):
            total += times * dot_flops(sub)
    return total


def step_jaxpr(config):
    run = setup(config, tokenizer=workload.stand_in_tokenizer(config), devices=jax.devices()[:1])
    step = run.train_step()
    batch = sharding.global_batch(workload.synthetic_batches(config, 1)[0], run.mesh)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        return jax.make_jaxpr(step.jitted)(run.abstract_state, batch).jaxpr


@pytest.mark.parametrize("name,task", [("bench_mlm_s", "mlm"), ("bench_clip_s", "clip"),
                                       ("bench_clip_s", "clip+mlm")])
@pytest.mark.parametrize("scan", [True, False])
def test_flops_formula_matches_the_matmuls_of_the_step(name, task, scan):
    config = load(name, [f"--config.model.scan={scan}", f"--config.task={task}"])
    counted = dot_flops(step_jaxpr(config))
    # The formula leaves out matrix-vector products (the MLM decoder-bias gradient): < 1%.
    assert counted == pytest.approx(workload.train_flops(config), rel=0.01)


def test_mlm_formula_by_hand_for_one_layer():
    config = load("bench_mlm_s", ["--config.model.text.depth=1"])
    b, n, e, f, v, m = 8, 16, 32, 64, 1200, 3
    forward = 2 * b * n * (4 * e * e + 2 * e * f) + 4 * b * n * n * e + 2 * b * m * (e * e + e * v)
    assert workload.train_flops(config) == 3 * forward


@pytest.mark.parametrize("name", ["bench_mlm_s", "bench_clip_s"])
def test_harness_prints_one_json_line_with_the_keys(name):
    command = [sys.executable, "-m", "benchmarks.train_step", f"configs/{name}.py", *TINY[name],
               "--steps", "2", "--warmup", "1", "--peak-n", "256", "--malloc", "system"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(KEYS) <= set(record)
    assert record["config"] == name and record["throughput"] > 0 and 0 < record["mfu"]
    assert record["flops_per_step"] == workload.train_flops(load(name))


def test_peer_summary_reports_ratios_and_missing_peers():
    config = load("bench_mlm_s")
    runs = {"mmjax": [{"step_time_s": 1.0, "throughput": 128.0, "compile_s": 2.0, "peak_rss_mb": 9.0,
                       "peak_flops": 1e9}],
            "hf_torch": [{"step_time_s": 4.0, "throughput": 32.0, "compile_s": 0.5, "peak_rss_mb": 9.0}],
            "hf_flax": []}
    out = train_step.summarize(config, "bench_mlm_s", runs, {"hf_flax": "ImportError: no flax"})
    assert out["ratios"] == {"hf_torch": 4.0} and out["results"]["mmjax"]["mfu"] == pytest.approx(
        workload.train_flops(config) / 1e9)
    assert out["round_ratios"] == {"hf_torch": 4.0}
    assert out["fastest_peer"] == "hf_torch" and out["unavailable"] == {"hf_flax": "ImportError: no flax"}
