"""The benchmark harness runs a tiny config end to end, its FLOPs formula matches a count of the
step's matmuls, the peers' builders make models of mmjax's size that train, each
implementation's record carries the FLOPs its own program executes, and rounds run in a
balanced order."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import peers, train_step, workload  # noqa: E402
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
    "bench_lm_s": ["--config.model.text.vocab_size=1200", "--config.model.text.context_length=16",
                   "--config.model.text.width=32", "--config.model.text.depth=2",
                   "--config.model.text.num_heads=2", "--config.model.text.mlp_dim=64",
                   "--config.train.batch_size=4"],
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
                                       ("bench_clip_s", "clip+mlm"), ("bench_lm_s", "lm")])
@pytest.mark.parametrize("scan", [True, False])
def test_flops_formula_matches_the_matmuls_of_the_step(name, task, scan):
    config = load(name, [f"--config.model.scan={scan}", f"--config.task={task}"])
    counted = dot_flops(step_jaxpr(config))
    # The formula leaves out matrix-vector products (the MLM decoder-bias gradient): < 1%.
    assert counted == pytest.approx(workload.train_flops(config), rel=0.01)


def test_mlm_formula_by_hand_for_one_layer():
    b, n, e, f, v, m = 8, 16, 32, 64, 1200, 3
    head = 2 * b * m * (e * e + e * v)
    full = load("bench_mlm_s", ["--config.model.text.depth=1", "--config.model.prune_last_layer=False"])
    forward = 2 * b * n * (4 * e * e + 2 * e * f) + 4 * b * n * n * e + head
    assert workload.train_flops(full) == 3 * forward
    # Pruned (the default): k and v at all n rows; q, output projection, MLP and scores at the m slots.
    pruned = load("bench_mlm_s", ["--config.model.text.depth=1"])
    forward = 2 * b * n * 2 * e * e + 2 * b * m * (2 * e * e + 2 * e * f) + 4 * b * m * n * e + head
    assert workload.train_flops(pruned) == 3 * forward


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
    flops, rate = record["flops"], record["flop_rate"]
    assert flops["matmul"] == record["flops_per_step"] and flops["xla"] > 0
    assert rate == {k: pytest.approx(v / record["step_time_s"]) for k, v in flops.items()}


def test_host_memory_reports_each_phase_and_xla_figures():
    command = [sys.executable, "-m", "benchmarks.host_memory", "configs/bench_clip_s.py",
               *TINY["bench_clip_s"], "--steps", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MMJAX_MALLOC": "system"})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    phases = record["resident_mb"]
    assert list(phases)[-3:] == ["step compiled", "step 1", "step 2"]
    assert phases["imports"] > phases["python"] > 0 and record["peak_rss_mb"] >= max(phases.values()) - 1
    assert record["xla_step_mb"]["temp"] > 0 and record["xla_init_mb"]["output"] > 0


def record(throughput, load=0.5, **extra):
    """A fabricated run record (one implementation, one round) at batch 8."""
    return {"step_time_s": 8 / throughput, "throughput": throughput, "compile_s": 1.0,
            "peak_rss_mb": 9.0, "load_avg_start": load, **extra}


def fabricated_rounds(loads, throughputs):
    """Rounds with the given start loads; throughputs: {impl: [per round]}."""
    return [{"round": i, "load_avg_start": load,
             "results": {k: record(v[i]) for k, v in throughputs.items() if v[i] is not None}}
            for i, load in enumerate(loads)]


def test_peer_summary_reports_ratios_and_missing_peers():
    config = load("bench_mlm_s")
    rounds = fabricated_rounds([0.2], {"mmjax": [128.0], "hf_torch": [32.0]})
    rounds[0]["results"]["mmjax"]["peak_flops"] = 1e9
    out = train_step.summarize(config, "bench_mlm_s", rounds, {"hf_flax": "ImportError: no flax"})
    assert out["ratios"] == {"hf_torch": 4.0} and out["results"]["mmjax"]["mfu"] == pytest.approx(
        workload.train_flops(config) / (8 / 128.0) / 1e9)
    assert out["round_ratios"] == {"hf_torch": [4.0]}
    assert out["fastest_peer"] == "hf_torch" and out["unavailable"] == {"hf_flax": "ImportError: no flax"}


def test_per_round_ratios_medians_and_the_fastest_peer():
    config = load("bench_clip_s")  # batch 8
    rounds = fabricated_rounds([0.1, 0.2, 0.3], {"mmjax": [100.0, 90.0, 110.0],
                                                 "open_clip": [50.0, 60.0, 40.0],
                                                 "big_vision": [80.0, 100.0, 88.0]})
    out = train_step.summarize(config, "bench_clip_s", rounds, {})
    assert out["rounds_used"] == out["rounds_total"] == 3
    assert out["results"]["mmjax"]["throughput"] == pytest.approx(100.0)
    assert out["results"]["open_clip"]["round_throughputs"] == [50.0, 60.0, 40.0]
    assert out["round_ratios"]["open_clip"] == pytest.approx([2.0, 1.5, 2.75])
    assert out["round_ratios"]["big_vision"] == pytest.approx([1.25, 0.9, 1.25])
    assert out["fastest_peer"] == "big_vision"  # median 88 against open_clip's 50
    assert out["ratio_vs_fastest_peer"] == pytest.approx(100.0 / 88.0)
    assert out["round_ratios_vs_fastest_peer"] == out["round_ratios"]["big_vision"]


def test_loaded_rounds_are_left_out_of_the_ratios():
    config = load("bench_clip_s")
    rounds = fabricated_rounds([0.4, 2.5, 0.9], {"mmjax": [100.0, 20.0, 120.0],
                                                 "open_clip": [50.0, 50.0, None]})
    out = train_step.summarize(config, "bench_clip_s", rounds, {}, max_load=1.0)
    assert [r["loaded"] for r in out["rounds"]] == [False, True, False]
    assert out["rounds_used"] == 2 and out["rounds"][1]["load_avg_start"] == 2.5
    assert out["results"]["mmjax"]["throughput"] == pytest.approx(8 / ((8 / 100 + 8 / 120) / 2))
    assert out["round_ratios"] == {"open_clip": [2.0]}  # round 2 has no open_clip run
    assert out["results"]["mmjax"]["round_throughputs"] == [100.0, 20.0, 120.0]
    assert out["results"]["open_clip"]["round_throughputs"] == [50.0, 50.0, None]


def test_an_implementation_that_ran_only_in_loaded_rounds_has_no_median():
    config = load("bench_clip_s")
    rounds = fabricated_rounds([0.4, 2.5, 0.5], {"mmjax": [100.0, 20.0, 120.0],
                                                 "open_clip": [50.0, 45.0, 60.0],
                                                 "big_vision": [None, 200.0, None]})
    out = train_step.summarize(config, "bench_clip_s", rounds, {}, max_load=1.0)
    assert out["results"]["big_vision"] == {"round_throughputs": [None, 200.0, None]}
    assert out["fastest_peer"] == "open_clip" and set(out["round_ratios"]) == {"open_clip"}


def test_no_ratio_when_every_round_was_loaded():
    config = load("bench_clip_s")
    rounds = fabricated_rounds([1.5, 3.0, 1.2], {"mmjax": [100.0] * 3, "open_clip": [50.0] * 3})
    out = train_step.summarize(config, "bench_clip_s", rounds, {}, max_load=1.0)
    assert out["rounds_used"] == 0 and out["ratio_vs_fastest_peer"] is None
    assert "load average" in out["ratio_reason"] and out["ratios"] is None
    assert out["results"]["mmjax"]["throughput"] == pytest.approx(100.0)  # medians still shown


def test_summary_gives_each_implementation_its_own_flops_and_flop_rate():
    """Fabricated runs of mmjax (pruned: fewer FLOPs; XLA's and the analytical count),
    big_vision (XLA's count) and open_clip (FlopCounterMode's): each keeps its own FLOPs per
    step, FLOP/s = FLOPs x steps/s at its median step time, and mmjax / peer is given in
    FLOPs and FLOP/s by the counter both have; the report says which FLOPs, per what."""
    config = load("bench_clip_s")  # batch 8
    flops = {"mmjax": {"xla": 100e9, "matmul": 97e9}, "big_vision": {"xla": 124e9},
             "open_clip": {"matmul": 122e9}}
    tps = {"mmjax": [80.0, 78.0, 70.0, 79.0], "big_vision": [60.0, 61.0, 59.0, 65.5],
           "open_clip": [74.0, 70.0, 75.0, 73.0]}
    rounds = [{"round": i, "load_avg_start": 0.5,
               "results": {k: record(v[i], flops=flops[k]) for k, v in tps.items()}} for i in range(4)]
    out = train_step.summarize(config, "bench_clip_s", rounds, {})
    steps_per_s = {k: 1 / np.median([8 / t for t in v]) for k, v in tps.items()}
    for impl, counts in flops.items():
        got = out["results"][impl]
        assert got["flops"] == counts
        assert got["flop_rate"] == {k: pytest.approx(v * steps_per_s[impl]) for k, v in counts.items()}
    assert out["work"]["big_vision"] == {"counter": "xla", "flops_ratio": pytest.approx(100 / 124),
                                         "flop_rate_ratio": pytest.approx(
                                             100 * steps_per_s["mmjax"] / (124 * steps_per_s["big_vision"]))}
    assert out["work"]["open_clip"]["counter"] == "matmul"
    assert out["work"]["open_clip"]["flops_ratio"] == pytest.approx(97 / 122)
    assert "flops_per_step" not in out  # no one figure for every implementation
    report = "\n".join(train_step.report_lines(out))
    assert "XLA cost-analysis FLOPs" in report and "FlopCounterMode" in report
    assert "per step of 8 examples" in report
    bv = next(line for line in report.splitlines() if line.startswith("big_vision:"))
    assert "124 GFLOP per step ('xla')" in bv and f"{124 * steps_per_s['big_vision']:.3g} GFLOP/s" in bv


def encoder_train_flops(b, n, e, f, depth):
    """Pre-/post-LN encoder layers in torch by hand: q, k, v, output projection and MLP 3x
    forward (input and weight gradients); SDPA's 2 matmuls forward and 5 backward (its
    backward recomputes the scores: FlopCounterMode's count for the fused kernels)."""
    return depth * (3 * 2 * b * n * (4 * e * e + 2 * e * f) + 7 * 2 * b * n * n * e)


@pytest.mark.parametrize("impl,name", [("hf_torch", "bench_mlm_s"), ("open_clip", "bench_clip_s"),
                                       ("hf_torch", "bench_lm_s")])
def test_torch_peers_record_the_flops_they_execute(impl, name):
    """Neither peer prunes its last layer, and HF's MLM head scores all 16 positions where
    mmjax's scores the 3 masked slots: their records carry their own, larger count (a hand
    count of their step), not mmjax's. GPT-2 does the work mmjax's LM does, but for the
    scores' causal half, which SDPA counts in full."""
    config = load(name)
    out = peers.run(impl, config, name, steps=2, warmup=1)
    assert "flops" in out, out.get("reason")
    b, t, i = config.train.batch_size, config.model.text, config.model.image
    if name == "bench_lm_s":   # GPT-2: layers, then the tied head at every position
        hand = (encoder_train_flops(b, t.context_length, t.width, t.mlp_dim, t.depth)
                + 3 * 2 * b * t.context_length * t.width * t.vocab_size)
        assert out["flops"] == {"matmul": hand}
        assert workload.train_flops(config) <= hand
        return
    if impl == "hf_torch":  # tied head (transform, decoder) at every position
        hand = (encoder_train_flops(b, t.context_length, t.width, t.mlp_dim, t.depth)
                + 3 * 2 * b * t.context_length * (t.width ** 2 + t.width * t.vocab_size))
    else:  # patch conv (no input gradient), ViT with a class token, text tower, projections, logits
        patches, c = (config.data.image_size // i.patch_size) ** 2, config.data.image_channels
        hand = (2 * 2 * b * patches * i.patch_size ** 2 * c * i.width
                + encoder_train_flops(b, patches + 1, i.width, i.mlp_dim, i.depth)
                + encoder_train_flops(b, t.context_length, t.width, t.mlp_dim, t.depth)
                + 3 * 2 * b * (i.width + t.width) * config.model.embed_dim
                + 3 * 2 * 2 * b * b * config.model.embed_dim)
    assert out["flops"] == {"matmul": hand}
    assert hand > 1.3 * workload.train_flops(config)  # mmjax's pruned step does less
    assert out["flop_rate"]["matmul"] == pytest.approx(hand / out["step_time_s"])
    assert "flops_per_step" not in out


def test_a_jax_peer_records_its_compiled_programs_flops(monkeypatch):
    """A JAX peer (workload.flax_peer, as HF Flax and big_vision use it) of one 64x256 @ 256x256
    matmul: its record carries XLA's count of its own compiled step, the matmul forward and
    its weight gradient (4·b·i·o) plus the few elementwise FLOPs of the loss and AdamW."""
    b, i, o = 64, 256, 256
    rng = np.random.default_rng(0)

    def build(config, compiled=False):
        holder = types.SimpleNamespace(params={"w": jnp.asarray(rng.standard_normal((i, o)), jnp.float32)})
        batches = [{"x": rng.standard_normal((b, i), dtype=np.float32)} for _ in range(2)]
        loss_fn = lambda params, batch: jnp.mean((batch["x"] @ params["w"]) ** 2)  # noqa: E731
        return workload.flax_peer(config, holder, loss_fn, batches), "toy"

    monkeypatch.setitem(peers.BUILDERS, ("clip", "toy_jax"), build)
    config = load("bench_clip_s")
    out = peers.run("toy_jax", config, "bench_clip_s", steps=2, warmup=1)
    assert set(out["flops"]) == {"xla"}
    assert 4 * b * i * o <= out["flops"]["xla"] <= 1.15 * 4 * b * i * o
    assert out["flops"]["xla"] != workload.train_flops(config)
    assert out["flop_rate"]["xla"] == pytest.approx(out["flops"]["xla"] / out["step_time_s"])


def test_rounds_below_four_or_odd_are_refused_unless_quick():
    config = "configs/bench_clip_s.py"
    for rounds in ("2", "3", "5"):
        with pytest.raises(SystemExit):
            train_step.parse_args([config, "--peers", "--rounds", rounds])
    with pytest.raises(SystemExit):
        train_step.parse_args([config, "--peers", "--rounds", "0", "--quick"])
    assert "--quick" in train_step.check_rounds(1, quick=False)
    assert train_step.parse_args([config, "--peers", "--rounds", "1", "--quick"]).rounds == 1
    assert train_step.parse_args([config, "--peers", "--rounds", "6"]).rounds == 6
    assert train_step.parse_args([config, "--peers"]).rounds is None  # balanced_rounds


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_round_order_is_balanced(n):
    impls = [f"impl{i}" for i in range(n)]
    rounds = train_step.balanced_rounds(n)
    orders = [train_step.round_order(impls, r) for r in range(rounds)]
    assert rounds >= 4 and all(sorted(o) == impls for o in orders)
    assert {k: sum(o[0] == k for o in orders) for k in impls} == dict.fromkeys(impls, rounds // n)
    for a in impls:  # every two rounds, each pair in both orders
        for b in impls:
            if a != b:
                assert [o.index(a) < o.index(b) for o in orders[0::2]] == [
                    o.index(a) > o.index(b) for o in orders[1::2]]
    if n == 2:
        assert orders == [impls, impls[::-1], impls[::-1], impls]  # ABBA


def test_peer_rounds_run_in_a_balanced_order(monkeypatch):
    """--peers with one peer unavailable: the others (mmjax and two peers) each run first in
    as many rounds, mmjax runs before each peer in half of them, and the rounds record the
    order the processes ran in."""
    config = load("bench_mlm_s")  # peers: hf_flax, hf_torch, hf_torch_compiled
    calls = []

    def run_process(args, impl):
        calls.append(impl)
        if impl == "hf_flax":
            return {"available": False, "reason": "ImportError: no Flax", "load_avg_start": 0.1}
        return record(100.0, impl=impl, unit="tokens/s", flops={"matmul": 1e9})

    monkeypatch.setattr(train_step, "run_process", run_process)
    args = train_step.parse_args(["configs/bench_mlm_s.py", "--peers", "--settle-s", "0",
                                  "--max-load", "1000"])
    out = train_step.run_peers(args, "bench_mlm_s", config)
    orders = [r["order"] for r in out["rounds"]]
    assert [c for c in calls if c != "hf_flax"] == [impl for order in orders for impl in order]
    ran = ("mmjax", "hf_torch", "hf_torch_compiled")
    assert calls.count("hf_flax") == 1 and all(sorted(o) == sorted(ran) for o in orders)
    firsts = [o[0] for o in orders]
    assert len(set(firsts.count(k) for k in ran)) == 1, f"first in each round: {firsts}"
    for peer in ran[1:]:
        before = [o.index("mmjax") < o.index(peer) for o in orders]
        assert sum(before) * 2 == len(orders), f"mmjax before {peer}: {before}"
    assert out["order_balance"]["first"] == {k: firsts.count(k) for k in ran}


def test_big_vision_peer_is_unavailable_without_a_checkout(monkeypatch):
    monkeypatch.delenv("BIG_VISION_DIR", raising=False)
    out = peers.run("big_vision", load("bench_clip_s"), "bench_clip_s", steps=1, warmup=0)
    assert out["available"] is False and "BIG_VISION_DIR" in out["reason"]
    monkeypatch.setenv("BIG_VISION_DIR", ROOT)  # a directory that is not a big_vision checkout
    out = peers.run("big_vision", load("bench_clip_s"), "bench_clip_s", steps=1, warmup=0)
    assert out["available"] is False and "not a big_vision checkout" in out["reason"]


@pytest.mark.skipif(not os.environ.get("BIG_VISION_DIR"),
                    reason="peer not installed: BIG_VISION_DIR does not name a big_vision checkout")
def test_big_vision_peer_matches_the_shapes_and_runs_a_step():
    from benchmarks import big_vision_peer
    config = load("bench_clip_s")
    model = big_vision_peer.import_two_towers().Model(**big_vision_peer.model_kwargs(config))
    batch = workload.synthetic_batches(config, 1)[0]
    params = big_vision_peer.init_params(model, batch)
    run = setup(config, tokenizer=workload.stand_in_tokenizer(config), devices=jax.devices()[:1])
    mine = sum(x.size for x in jax.tree.leaves(run.abstract_state.params))
    assert sum(x.size for x in jax.tree.leaves(params)) == pytest.approx(mine, rel=0.03)
    out = peers.run("big_vision", config, "bench_clip_s", steps=1, warmup=1)
    assert out["throughput"] > 0 and out["version"].startswith("big_vision")


def _peer_or_skip(monkeypatch, config, impl, package):
    """The peer's own benchmark step (benchmarks.peers.BUILDERS), its torch model and the
    losses its steps compute: (step, model, losses). The test install always has open_clip
    and transformers, so a missing one is a broken install: a failure, never a skip."""
    if importlib.util.find_spec(package) is None:
        pytest.fail(f"peer {impl} not installed: no {package}; run launch/install.sh test")
    captured, losses, real = {}, [], peers.torch_peer

    def torch_peer(config, model, loss_fn, batches, compiled):
        def recorded(forward, batch):
            loss = loss_fn(forward, batch)
            losses.append(float(loss.detach()))
            return loss
        captured["model"] = model
        return real(config, model, recorded, batches, compiled)

    monkeypatch.setattr(peers, "torch_peer", torch_peer)
    step, _ = peers.BUILDERS[(config.task, impl)](config)
    return step, captured["model"], losses


def _mmjax_step(config):
    """mmjax's same-size model: (param count, loss of one train step, fraction of the param
    leaves that step changed)."""
    run = setup(config, tokenizer=workload.stand_in_tokenizer(config), devices=jax.devices()[:1])
    state = run.init_state()
    before = jax.device_get(state.params)
    batch = sharding.global_batch(workload.synthetic_batches(config, 1)[0], run.mesh)
    state, metrics = run.train_step()(state, batch)
    after = jax.tree.leaves(jax.device_get(state.params))
    changed = [not np.array_equal(a, b) for a, b in zip(after, jax.tree.leaves(before))]
    return sum(x.size for x in after), float(metrics["loss"]), np.mean(changed)


def _peer_one_step(step, model, losses):
    """(loss, fraction of the parameter tensors changed) of one step of a torch peer."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(0)
    changed = [not np.array_equal(p.detach().numpy(), before[n].numpy()) for n, p in model.named_parameters()]
    assert len(losses) == 1
    return losses[0], np.mean(changed)


def test_open_clip_peer_is_mmjaxs_size_and_trains(monkeypatch):
    """benchmarks/peers.py's open_clip builder on the tiny CLIP-S: as many parameters as
    mmjax's model of the config, and one step of each has a finite loss and moves every
    parameter (AdamW with weight decay: even the unused ones)."""
    config = load("bench_clip_s")
    step, model, losses = _peer_or_skip(monkeypatch, config, "open_clip", "open_clip")
    mine, my_loss, my_changed = _mmjax_step(config)
    theirs = sum(p.numel() for p in model.parameters())
    assert step.param_count == theirs
    assert theirs == mine, f"open_clip's model has {theirs} parameters, mmjax's {mine}"
    loss, changed = _peer_one_step(step, model, losses)
    assert np.isfinite(loss) and loss > 0 and np.isfinite(my_loss) and my_loss > 0
    assert changed == 1.0, f"one step of the open_clip peer changed {changed:.0%} of its parameters"
    assert my_changed == 1.0


def test_hf_bert_peer_is_mmjaxs_size_and_trains(monkeypatch):
    """benchmarks/peers.py's HF PyTorch BertForMaskedLM builder on the tiny MLM-S: the same
    parameters as mmjax's model of the config but for the position table, which HF's
    config there always gives 512 rows (mmjax: context_length); one step of each has a
    finite loss near log(vocab) and moves the parameters."""
    config = load("bench_mlm_s")
    step, model, losses = _peer_or_skip(monkeypatch, config, "hf_torch", "transformers")
    mine, my_loss, my_changed = _mmjax_step(config)
    t = config.model.text
    positions = model.bert.embeddings.position_embeddings.weight
    assert tuple(positions.shape) == (512, t.width) and t.context_length < 512
    theirs, mine = step.param_count - positions.numel(), mine - t.context_length * t.width
    assert theirs == mine, f"without the position tables HF's BERT has {theirs} parameters, mmjax's {mine}"
    loss, changed = _peer_one_step(step, model, losses)
    assert np.isfinite(loss) and np.isfinite(my_loss)
    assert loss == pytest.approx(np.log(t.vocab_size), rel=0.2)   # random init: ~log(vocab)
    assert my_loss == pytest.approx(np.log(t.vocab_size), rel=0.2)
    assert changed > 0.9, f"one step of the HF peer changed {changed:.0%} of its parameters"
    assert my_changed > 0.9


def test_profile_summary_sums_ops_by_name_and_counts_overlaps_once():
    """benchmarks/profile_step.summarize on a hand-made Perfetto trace: a GPU stream's kernels
    summed by HLO op (the host's events and the runtime's '::' scopes left out), busy time
    the union of the intervals, per step."""
    from benchmarks.profile_step import summarize
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #14"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "Stream #15"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 2, "tid": 1, "args": {"name": "python"}}]
    def kernel(tid, ts, dur, name, hlo_op=None):
        return {"ph": "X", "pid": 1, "tid": tid, "ts": ts, "dur": dur, "name": name,
                "args": {"hlo_op": hlo_op} if hlo_op else {}}
    events = [kernel(7, 0, 100, "gemm_a", "dot.1"), kernel(7, 150, 50, "gemm_a", "dot.1"),
              kernel(8, 180, 40, "memcpy"), kernel(7, 300, 30, "scatter"),
              kernel(7, 0, 400, "Thunk::Execute"),
              {"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 999, "name": "train_step", "args": {}}]
    out = summarize({"traceEvents": meta + events}, steps=2, top=10)
    assert [(o["name"], o["ms_per_step"]) for o in out["ops"]] == [
        ("dot.1  [gemm_a]", 0.075), ("memcpy", 0.02), ("scatter", 0.015)]
    # union: [0,100] + [150,220] + [300,330] = 200 us over 2 steps
    assert out["busy_ms_per_step"] == 0.1 and out["summed_op_ms_per_step"] == 0.11
