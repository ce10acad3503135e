"""Times the train step of a config: throughput, compile time, FLOPs, MFU against a measured peak, memory.

  python -m benchmarks.train_step configs/bench_mlm_s.py [--config.KEY=VALUE ...] [--steps 10]
  .venv-bench/bin/python -m benchmarks.train_step configs/bench_clip_s.py --peers [--rounds 3]

Builds the model and optimizer from the config, compiles the jitted step ahead of time,
warms up, then times `--steps` steady-state steps one by one (the next synthetic batch is
put on the device while the step runs) and measures the machine's matmul peak (jitted n×n
float32 and bfloat16 matmuls) in the same process. Prints one JSON line; MFU = achieved
FLOP/s (the task's `train_flops`, mmjax/flops.py) / measured peak of the compute dtype.

--peers runs mmjax and each installed peer (benchmarks/peers.py; big_vision when
BIG_VISION_DIR names a checkout) in fresh processes, in alternating order for `--rounds`
rounds (at least 3; `--rounds 1 --quick` for a smoke run) so machine noise hits all of them.
Before each round it waits up to `--settle-s` for the 1-minute load average to fall to
`--max-load`; a round that starts above it is marked loaded and left out of the ratios.
Prints one JSON line: each implementation's median, the per-round ratios mmjax / peer, and
the ratio against the fastest peer.
"""

import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import peers
from benchmarks.workload import (examples_per_step, malloc_name, stand_in_tokenizer,
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
    record = timing_record(config, name, "mmjax", times, compile_s)
    record["achieved_flops"] = record["flops_per_step"] / record["step_time_s"]
    memory = compiled.memory_analysis()
    if memory is not None:
        record["step_temp_mb"] = memory.temp_size_in_bytes / 2 ** 20
    if measure_peak:
        peaks = {d: matmul_peak(jnp.dtype(d), peak_n) for d in ("float32", "bfloat16")}
        record.update(peak_flops=peaks.get(config.model.dtype, peaks["float32"]),
                      peak_flops_float32=peaks["float32"], peak_flops_bfloat16=peaks["bfloat16"])
        record["mfu"] = record["achieved_flops"] / record["peak_flops"]
    record.update(param_count=sum(x.size for x in jax.tree.leaves(state.params)),
                  xla_flops=xla_flops(compiled))
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


def run_peers(args, name, config):
    """mmjax and every peer of the task, each in a fresh process, alternating for args.rounds."""
    impls = ["mmjax", *peers.PEERS.get(config.task, ())]
    rounds, unavailable = [], {}
    for r in range(args.rounds):
        start_load, results = settle(args.max_load, args.settle_s), {}
        for impl in impls if r % 2 == 0 else impls[::-1]:
            if impl in unavailable:
                continue
            result = run_process(args, impl)
            print(f"round {r} {impl} (load {result['load_avg_start']:.2f}): "
                  + (f"{result['throughput']:.1f} {result['unit']}" if "throughput" in result
                     else f"unavailable ({result['reason']})"), file=sys.stderr)
            if "throughput" in result:
                results[impl] = result
            else:
                unavailable[impl] = result["reason"]
        rounds.append({"round": r, "load_avg_start": start_load, "results": results})
    return dict(summarize(config, name, rounds, unavailable, args.max_load), quick=args.quick)


def mark_loaded(rounds, max_load):
    """Marks each round `loaded` when its load average at the start exceeded max_load;
    returns the rounds that were not."""
    for r in rounds:
        r["loaded"] = r["load_avg_start"] > max_load
    return [r for r in rounds if not r["loaded"]]


def impl_summary(config, records):
    """One implementation over its runs: median step time (and throughput at it), best compile."""
    median = statistics.median(r["step_time_s"] for r in records)
    first = records[0]
    out = {"throughput": examples_per_step(config) / median, "step_time_s": median,
           "compile_s": min(r["compile_s"] for r in records),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in records)}
    out.update({k: max(r[k] for r in records) for k in (  # the least disturbed peak
        "peak_flops", "peak_flops_float32", "peak_flops_bfloat16") if k in first})
    out.update({k: first[k] for k in ("version", "param_count", "xla_flops") if k in first})
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
        return dict(out, ratios=None, round_ratios=None, ratio_vs_fastest_peer=None,
                    ratio_reason=reason)
    mine = summary["mmjax"]["throughput"]
    out["ratios"] = {k: mine / v for k, v in peer_tp.items()}
    out["round_ratios"] = {k: [r["results"]["mmjax"]["throughput"] / r["results"][k]["throughput"]
                               for r in used if {"mmjax", k} <= set(r["results"])]
                           for k in peer_tp}
    out["ratio_vs_fastest_peer"] = out["ratios"][out["fastest_peer"]]
    out["round_ratios_vs_fastest_peer"] = out["round_ratios"][out["fastest_peer"]]
    return out


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
    out = {"config": name, "unit": unit(config), "flops_per_step": train_flops(config),
           "results": summary, "unavailable": unavailable, "load_avg": load_avg(),
           "malloc": malloc_name(), "max_load": max_load, "rounds_total": len(rounds),
           "rounds_used": len(used),
           "rounds": [{"round": r["round"], "load_avg_start": r["load_avg_start"],
                       "loaded": r["loaded"], "order": list(r["results"]),
                       "run_load_avg_start": {k: v.get("load_avg_start")
                                              for k, v in r["results"].items()}} for r in rounds]}
    if "peak_flops" in summary.get("mmjax", {}):
        achieved = out["flops_per_step"] / summary["mmjax"]["step_time_s"]
        summary["mmjax"]["mfu"] = achieved / summary["mmjax"]["peak_flops"]
    out.update(compare(summary, used, max_load))
    return out


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
    p.add_argument("--peers", action="store_true", help="also run the installed peers, alternating")
    p.add_argument("--rounds", type=int, default=3, help="rounds of alternating runs with --peers (>= 3)")
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
    problem = check_rounds(args.rounds, args.quick) if args.peers else None
    if problem:
        p.error(problem)
    return args


def check_rounds(rounds, quick):
    """Why `rounds` alternating rounds are refused (None when they are not)."""
    if rounds < 1:
        return f"--rounds {rounds}: at least 1"
    if rounds < 3 and not quick:
        return (f"--rounds {rounds}: --peers reports medians and per-round ratios over at least 3 "
                "alternating rounds; add --quick for a smoke run with fewer")
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
