"""Times the train step of a config: throughput, compile time, FLOPs, MFU against a measured peak, memory.

  python -m benchmarks.train_step configs/bench_mlm_s.py [--config.KEY=VALUE ...] [--steps 10]
  .venv-bench/bin/python -m benchmarks.train_step configs/bench_clip_s.py --peers [--rounds 3]

Builds the model and optimizer from the config, compiles the jitted step ahead of time,
warms up, then times `--steps` steady-state steps one by one (the next synthetic batch is
put on the device while the step runs) and measures the machine's matmul peak (jitted n×n
float32 and bfloat16 matmuls) in the same process. Prints one JSON line; MFU = achieved
FLOP/s (the task's `train_flops`, mmjax/flops.py) / measured peak of the compute dtype.

--peers runs mmjax and each installed peer (benchmarks/peers.py; big_vision when
BIG_VISION_DIR names a checkout) in fresh processes, for `--rounds` rounds in a balanced
order (round_order: every implementation runs first equally often, and every two rounds each
pair runs in both orders), so neither machine noise nor the load a run leaves behind favours
one of them. Before each round it waits up to `--settle-s` for the 1-minute load average to
fall to `--max-load`; a round that starts above it is marked loaded and left out of the
ratios. Prints one JSON line: each implementation's median, the FLOPs per step its own
program executes and its FLOP/s, the per-round ratios mmjax / peer, the ratio against the
fastest peer, and the order of every round; the report goes to stderr.
"""

import argparse
import ctypes.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import peers
from benchmarks.workload import (FLOP_COUNTERS, examples_per_step, malloc_name, stand_in_tokenizer,
                                 synthetic_batches, timing_record, train_flops, unit, xla_flops)
from mmjax import config as config_lib
from mmjax import sharding
from mmjax.train import mfu
from mmjax.train.setup import setup

def matmul_peak(dtype, n=None, repeats=5):
    """Best FLOP/s of a jitted n×n @ n×n matmul in `dtype` (n = 2048 on CPU, 8192 elsewhere):
    the training loop's own measurement (mmjax/train/mfu.py) at the benchmark's size."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    return mfu.measured_peak(jnp.dtype(dtype).name, n, repeats)


def time_steps(step, state, host_batches, put, warmup, steps):
    """Runs warmup + steps steps; returns (state, seconds of each timed step).

    The next batch goes to the device while the step runs; the wait is on the step's outputs.
    """
    batch, times = put(host_batches[0]), []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        batch = put(host_batches[(i + 1) % len(host_batches)])
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return state, times[warmup:]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def peak_device_mb():
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 20


def run_mmjax(config, name, steps, warmup, measure_peak=True, peak_n=None):
    run = setup(config, tokenizer=stand_in_tokenizer(config))
    mesh, state, step = run.mesh, run.init_state(), run.train_step()
    host_batches = synthetic_batches(config)
    put = lambda b: sharding.global_batch(b, mesh)  # noqa: E731
    start = time.perf_counter()
    compiled = step.compile(state, put(host_batches[0]))
    compile_s = time.perf_counter() - start
    state, times = time_steps(step, state, host_batches, put, warmup, steps)
    flops = {"xla": xla_flops(compiled), "matmul": train_flops(config)}
    record = timing_record(config, name, "mmjax", times, compile_s, flops)
    record["flops_per_step"] = flops["matmul"]  # mmjax/flops.py's model FLOPs: the MFU numerator
    record["achieved_flops"] = record["flops_per_step"] / record["step_time_s"]
    memory = compiled.memory_analysis()
    if memory is not None:
        record["step_temp_mb"] = memory.temp_size_in_bytes / 2 ** 20
    if measure_peak:
        peaks = {d: matmul_peak(jnp.dtype(d), peak_n) for d in ("float32", "bfloat16")}
        record.update(peak_flops=peaks.get(config.model.dtype, peaks["float32"]),
                      peak_flops_float32=peaks["float32"], peak_flops_bfloat16=peaks["bfloat16"])
        record["mfu"] = record["achieved_flops"] / record["peak_flops"]
    record["param_count"] = sum(x.size for x in jax.tree.leaves(state.params))
    record.update(peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device_mb(),
                  model={k: config.model[k] for k in ("scan", "remat", "attention")},
                  device=jax.devices()[0].device_kind, device_count=jax.device_count(),
                  load_avg=os.getloadavg()[0], malloc=malloc_name())
    return record


def run_one(args, name, config):
    if args.impl == "mmjax":
        return run_mmjax(config, name, args.steps, args.warmup, not args.no_peak, args.peak_n)
    return peers.run(args.impl, config, name, args.steps, args.warmup)


def load_avg():
    return os.getloadavg()[0]


def settle(max_load, wait_s, poll_s=5.0):
    """Waits up to wait_s seconds for the 1-minute load average to fall to max_load; returns it.

    The previous round's own processes keep the average up for a minute after they exit.
    """
    deadline, load = time.monotonic() + wait_s, load_avg()
    while load > max_load and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = load_avg()
    return load


def run_process(args, impl):
    """One implementation in a fresh process: its record, or {'reason': ...} when it did not run."""
    command = [sys.executable, "-m", "benchmarks.train_step", args.config, *args.overrides,
               "--impl", impl, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--malloc", args.malloc]
    load = load_avg()
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {
        "available": False, "reason": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return dict(result, load_avg_start=load)


def round_order(impls, r):
    """The order of round r: rounds come in pairs, one rotation of `impls` and then the same
    reversed; the rotation moves two places per pair (one for two implementations: ABBA).

    Every two rounds each pair of implementations runs in both orders and each one's mean
    position is the same; each runs first equally often over balanced_rounds(len(impls)).
    """
    n = len(impls)
    shift = ((r // 2) * (2 if n > 2 else 1)) % max(n, 1)
    rotated = impls[shift:] + impls[:shift]
    return rotated if r % 2 == 0 else rotated[::-1]


def balanced_rounds(n):
    """The fewest rounds, at least 4, in which round_order puts each of n implementations
    first equally often: a multiple of n (n even) or of 2n (n odd)."""
    period = n if n % 2 == 0 else 2 * n
    return period * math.ceil(4 / period)


def run_peers(args, name, config):
    """mmjax and every peer of the task, each in a fresh process, in round_order for
    args.rounds rounds (None: balanced_rounds of the implementations that ran in round 0)."""
    impls = ["mmjax", *peers.PEERS.get(config.task, ())]
    rounds, unavailable, total, r = [], {}, args.rounds, 0
    while total is None or r < total:
        start_load, results = settle(args.max_load, args.settle_s), {}
        for impl in round_order([i for i in impls if i not in unavailable], r):
            result = run_process(args, impl)
            print(f"round {r} {impl} (load {result['load_avg_start']:.2f}): "
                  + (f"{result['throughput']:.1f} {result['unit']}" if "throughput" in result
                     else f"unavailable ({result['reason']})"), file=sys.stderr)
            if "throughput" in result:
                results[impl] = result
            else:
                unavailable[impl] = result["reason"]
        rounds.append({"round": r, "load_avg_start": start_load, "results": results})
        total = total or balanced_rounds(max(len(impls) - len(unavailable), 1))
        r += 1
    out = dict(summarize(config, name, rounds, unavailable, args.max_load), quick=args.quick)
    print("\n".join(report_lines(out)), file=sys.stderr)
    return out


def mark_loaded(rounds, max_load):
    """Marks each round `loaded` when its load average at the start exceeded max_load;
    returns the rounds that were not."""
    for r in rounds:
        r["loaded"] = r["load_avg_start"] > max_load
    return [r for r in rounds if not r["loaded"]]


def impl_summary(config, records):
    """One implementation over its runs: median step time (and throughput at it), best compile,
    the FLOPs per step its own program executes and its FLOP/s at the median step time."""
    median = statistics.median(r["step_time_s"] for r in records)
    first = records[0]
    flops = first.get("flops", {})  # counted from the program, the same in every run
    out = {"throughput": examples_per_step(config) / median, "step_time_s": median,
           "flops": flops, "flop_rate": {k: v / median for k, v in flops.items()},
           "compile_s": min(r["compile_s"] for r in records),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in records)}
    out.update({k: max(r[k] for r in records) for k in (  # the least disturbed peak
        "peak_flops", "peak_flops_float32", "peak_flops_bfloat16") if k in first})
    out.update({k: first[k] for k in ("version", "param_count") if k in first})
    return out


def compare(summary, used, max_load):
    """mmjax / peer: of the medians and per round (unloaded rounds only), and the fastest peer."""
    peer_tp = {k: v["throughput"] for k, v in summary.items()
               if k != "mmjax" and "throughput" in v}
    reason = ("mmjax did not run" if "throughput" not in summary.get("mmjax", {}) else "no peer ran" if not peer_tp
              else f"every round started with the load average above --max-load {max_load}"
              if not used else None)
    out = {"fastest_peer": max(peer_tp, key=peer_tp.get) if peer_tp else None}
    if reason:
        return dict(out, ratios=None, round_ratios=None, ratio_vs_fastest_peer=None, work=None,
                    ratio_reason=reason)
    mine = summary["mmjax"]["throughput"]
    out["ratios"] = {k: mine / v for k, v in peer_tp.items()}
    out["round_ratios"] = {k: [r["results"]["mmjax"]["throughput"] / r["results"][k]["throughput"]
                               for r in used if {"mmjax", k} <= set(r["results"])]
                           for k in peer_tp}
    out["ratio_vs_fastest_peer"] = out["ratios"][out["fastest_peer"]]
    out["round_ratios_vs_fastest_peer"] = out["round_ratios"][out["fastest_peer"]]
    out["work"] = {k: work(summary["mmjax"], summary[k]) for k in peer_tp}
    return out


def work(mine, theirs):
    """mmjax / peer in FLOPs per step and in FLOP/s, by a counter both have (XLA's first);
    None when they share none."""
    counter = next((c for c in FLOP_COUNTERS if c in mine["flops"] and c in theirs["flops"]), None)
    if counter is None:
        return None
    return {"counter": counter, "flops_ratio": mine["flops"][counter] / theirs["flops"][counter],
            "flop_rate_ratio": mine["flop_rate"][counter] / theirs["flop_rate"][counter]}


def summarize(config, name, rounds, unavailable, max_load=1.0):
    """Per implementation the median over the unloaded rounds (over all when every round was
    loaded; none when it ran only in loaded ones), mmjax's MFU, and compare()'s ratios.

    rounds: [{'round', 'load_avg_start', 'results': {impl: record}}] in the order they ran.
    """
    used = mark_loaded(rounds, max_load)
    basis = used or rounds
    impls = list(dict.fromkeys(k for r in rounds for k in r["results"]))
    summary = {}
    for impl in impls:
        records = [r["results"][impl] for r in basis if impl in r["results"]]
        summary[impl] = impl_summary(config, records) if records else {}
        summary[impl]["round_throughputs"] = [r["results"][impl]["throughput"]
                                              if impl in r["results"] else None for r in rounds]
    out = {"config": name, "unit": unit(config), "batch_size": config.train.batch_size,
           "flop_counters": {k: f"{v}, per step of {config.train.batch_size} examples"
                             for k, v in FLOP_COUNTERS.items()},
           "results": summary, "unavailable": unavailable, "load_avg": load_avg(),
           "malloc": malloc_name(), "max_load": max_load, "rounds_total": len(rounds),
           "rounds_used": len(used),
           "rounds": [{"round": r["round"], "load_avg_start": r["load_avg_start"],
                       "loaded": r["loaded"], "order": list(r["results"]),
                       "run_load_avg_start": {k: v.get("load_avg_start")
                                              for k, v in r["results"].items()}} for r in rounds],
           "order_balance": order_balance(used)}
    if "peak_flops" in summary.get("mmjax", {}):
        achieved = train_flops(config) / summary["mmjax"]["step_time_s"]
        summary["mmjax"]["mfu"] = achieved / summary["mmjax"]["peak_flops"]
    out.update(compare(summary, used, max_load))
    return out


def order_balance(used):
    """Over the rounds the ratios use: how often each implementation ran first, and for each
    peer how often mmjax ran before it and after it."""
    orders = [list(r["results"]) for r in used]
    impls = list(dict.fromkeys(k for o in orders for k in o))
    first = {k: sum(o[0] == k for o in orders if o) for k in impls}
    pairs = {k: [o.index("mmjax") < o.index(k) for o in orders if {"mmjax", k} <= set(o)]
             for k in impls if k != "mmjax"}
    return {"rounds": len(orders), "first": first,
            "mmjax_before": {k: sum(v) for k, v in pairs.items()},
            "mmjax_after": {k: len(v) - sum(v) for k, v in pairs.items()}}


def report_lines(out):
    """The summary in words: which FLOPs, then per implementation its throughput, FLOPs per
    step, FLOP/s and mmjax / it in each."""
    used = sorted({c for s in out["results"].values() for c in s.get("flops", {})})
    lines = [f"{out['config']}, FLOPs '{c}': {out['flop_counters'][c]}" for c in used]
    for impl, s in out["results"].items():
        if "throughput" not in s:
            lines.append(f"{impl}: ran only in loaded rounds")
            continue
        flops = "; ".join(f"{s['flops'][c] / 1e9:.3g} GFLOP per step ('{c}'), "
                          f"{s['flop_rate'][c] / 1e9:.3g} GFLOP/s" for c in s["flops"])
        line = f"{impl}: {s['throughput']:.1f} {out['unit']}; {flops or 'FLOPs not counted'}"
        if impl in (out.get("ratios") or {}):
            line += f"; mmjax / {impl}: {out['ratios'][impl]:.2f}x the throughput"
            w = out["work"][impl]
            line += (f", {w['flops_ratio']:.2f}x the FLOPs per step and {w['flop_rate_ratio']:.2f}x "
                     f"the FLOP/s ('{w['counter']}')" if w else ", no FLOP counter in common")
        lines.append(line)
    b = out.get("order_balance", {})
    lines.append(f"order over {b.get('rounds', 0)} used rounds: first {b.get('first')}, "
                 f"mmjax before / after each peer {b.get('mmjax_before')} / {b.get('mmjax_after')}")
    return lines


def preload_tcmalloc(argv):
    """Re-executes this command with tcmalloc preloaded, if it is installed and not loaded yet.

    XLA's CPU runtime allocates the step's temporaries (hundreds of MB) on every call, and
    glibc hands such blocks back to the kernel on free, so each step page-faults them in
    again: ~20% of a CPU step's time in the kernel at the benchmark shapes. tcmalloc keeps
    them. Peers started by --peers inherit it, so every implementation runs under it.
    """
    lib = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if lib is None or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    env = dict(os.environ, LD_PRELOAD=" ".join(filter(None, [os.environ.get("LD_PRELOAD"), lib])))
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.train_step", *argv], env)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="a config file, e.g. configs/bench_mlm_s.py")
    p.add_argument("--steps", type=int, default=10, help="timed steady-state steps (>= 7)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument("--peers", action="store_true", help="also run the installed peers, in a balanced order")
    p.add_argument("--rounds", type=int,
                   help="rounds with --peers (even, >= 4; default: the fewest in which every "
                        "implementation that runs is first equally often)")
    p.add_argument("--quick", action="store_true",
                   help="allow --rounds below 3 (smoke runs, not measurements)")
    p.add_argument("--max-load", type=float, default=1.0,
                   help="rounds starting above this 1-minute load average are left out of the ratios")
    p.add_argument("--settle-s", type=float, default=90.0,
                   help="seconds to wait before each round for the load average to reach --max-load")
    p.add_argument("--impl", default="mmjax", help="run one implementation here (used by --peers)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    p.add_argument("--peak-n", type=int, help="matmul size for the peak (default 2048 on CPU, else 8192)")
    p.add_argument("--out", help="also append the JSON line to this file")
    p.add_argument("--malloc", choices=("tcmalloc", "system"), default="tcmalloc",
                   help="preload tcmalloc when installed (apt-get install libtcmalloc-minimal4)")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        p.error(f"unknown arguments {bad}; config overrides look like --config.train.batch_size=8")
    args.overrides = overrides
    problem = check_rounds(args.rounds, args.quick) if args.peers and args.rounds is not None else None
    if problem:
        p.error(problem)
    return args


def check_rounds(rounds, quick):
    """Why `rounds` rounds are refused (None when they are not)."""
    if rounds < 1:
        return f"--rounds {rounds}: at least 1"
    if (rounds < 4 or rounds % 2) and not quick:
        return (f"--rounds {rounds}: --peers reports medians and per-round ratios over an even "
                "number of rounds, at least 4, so that each pair runs in both orders equally "
                "often; leave --rounds out for a balanced count, or add --quick for a smoke run")
    return None


def main(argv=None):
    args = parse_args(argv)
    if args.malloc == "tcmalloc" and __name__ == "__main__":
        preload_tcmalloc(sys.argv[1:] if argv is None else argv)
    config = config_lib.load(args.config, args.overrides)
    name = os.path.basename(args.config.partition(":")[0]).removesuffix(".py")
    record = run_peers(args, name, config) if args.peers else run_one(args, name, config)
    line = json.dumps(record)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
