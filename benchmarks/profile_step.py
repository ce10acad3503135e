"""Where a config's train step spends its time: a profiler trace of a few steady-state steps,
summed by operation.

  python -m benchmarks.profile_step configs/bench_bert_base.py [--config.KEY=VALUE ...] \
      [--steps 5] [--out /tmp/profile] [--top 30]

Builds and compiles the step as `benchmarks.train_step` does (synthetic batches), warms up,
then traces `--steps` steps with `jax.profiler.trace(create_perfetto_trace=True)`. From the
Perfetto trace it sums the duration of every operation the step ran on the device (GPU/TPU
kernels; on a CPU the XLA thunks on its worker threads) by name, and prints one JSON line:
the wall time of a step, the busy time of the device per step (the gap between the two is
time the device waited for the host), and the `--top` operations with their milliseconds per
step and share of the busy time. The trace (`*.xplane.pb`, for TensorBoard's profile tab,
and `perfetto_trace.json.gz`) and the compiled step's HLO (`step.hlo.txt`, to look an
operation's name up) stay under `--out`.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import time

import jax

from benchmarks.train_step import time_steps
from benchmarks.workload import stand_in_tokenizer, synthetic_batches
from mmjax import config as config_lib
from mmjax import sharding
from mmjax.train.setup import setup


def device_tracks(trace):
    """{(pid, tid)} of the tracks whose operations ran on an accelerator, or on a CPU's XLA
    worker threads when there is no accelerator."""
    names = {}
    for event in trace["traceEvents"]:
        if event.get("ph") == "M" and event.get("name") in ("process_name", "thread_name"):
            key = (event["pid"],) if event["name"] == "process_name" else (event["pid"], event["tid"])
            names[key] = event["args"]["name"]
    accelerator = {pid for (pid, *rest), name in names.items()
                   if not rest and ("/device:" in name and "CPU" not in name.upper())}
    tracks = {key for key in names if len(key) == 2 and key[0] in accelerator}
    if not tracks:  # a CPU: the XLA runtime's threads
        tracks = {key for key, name in names.items() if len(key) == 2
                  and any(s in name for s in ("XLA", "xla", "Eigen", "tf_"))}
    return tracks, names


def union_us(intervals):
    """Microseconds covered by at least one of the (start, end) intervals."""
    total, end = 0.0, -1.0
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def summarize(trace, steps, top):
    """Per-step busy time (the union over the device tracks) and the `top` operations by
    summed duration. An operation is named by its HLO instruction where the trace gives one
    (GPU kernels carry `hlo_op`), with the kernel's name after it; the runtime's own scopes
    (names with '::', which contain the operations) are left out."""
    tracks, names = device_tracks(trace)
    by_name, intervals = collections.Counter(), []
    for event in trace["traceEvents"]:
        if (event.get("ph") != "X" or (event.get("pid"), event.get("tid")) not in tracks
                or "::" in event["name"]):
            continue
        hlo_op = (event.get("args") or {}).get("hlo_op")
        name = f"{hlo_op}  [{event['name'][:60]}]" if hlo_op and hlo_op != event["name"] else event["name"]
        by_name[name] += event["dur"]
        intervals.append((event["ts"], event["ts"] + event["dur"]))
    summed = sum(by_name.values())
    ops = [{"name": name, "ms_per_step": round(us / steps / 1e3, 3), "share": round(us / summed, 4)}
           for name, us in by_name.most_common(top)]
    return {"device_tracks": sorted({names[k] for k in tracks})[:8],
            "busy_ms_per_step": round(union_us(intervals) / steps / 1e3, 3),
            "summed_op_ms_per_step": round(summed / steps / 1e3, 3), "ops": ops}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", default="/tmp/mmjax_profile")
    args, overrides = parser.parse_known_args(argv)
    config = config_lib.load(args.config, overrides)
    run = setup(config, tokenizer=stand_in_tokenizer(config))
    state, step = run.init_state(), run.train_step()
    host_batches = synthetic_batches(config)
    put = lambda b: sharding.global_batch(b, run.mesh)  # noqa: E731
    compiled = step.compile(state, put(host_batches[0]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "step.hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    state, _ = time_steps(step, state, host_batches, put, args.warmup, 0)
    start = time.perf_counter()
    with jax.profiler.trace(args.out, create_perfetto_trace=True):
        state, times = time_steps(step, state, host_batches, put, 0, args.steps)
    traced_s = time.perf_counter() - start
    path = max(glob.glob(os.path.join(args.out, "**", "perfetto_trace.json.gz"), recursive=True),
               key=os.path.getmtime)
    with gzip.open(path) as f:
        trace = json.load(f)
    out = {"config": args.config, "overrides": overrides, "device": jax.devices()[0].device_kind,
           "steps": args.steps, "step_ms": round(1e3 * sum(times) / len(times), 3),
           "traced_s": round(traced_s, 2), "trace": path, **summarize(trace, args.steps, args.top)}
    print(json.dumps(out))
    for op in out["ops"]:
        print(f"{op['ms_per_step']:9.3f} ms {100 * op['share']:5.1f}%  {op['name'][:110]}", file=sys.stderr)


if __name__ == "__main__":
    main()
