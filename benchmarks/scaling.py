"""Scaling curves: throughput and memory of a train step against batch size and sequence length.

  python -m benchmarks.scaling configs/bench_mlm_s.py            # -> benchmarks/results/
  python -m benchmarks.scaling configs/bench_clip_s.py --batch 16,32,64,128 --length 16,32,64

Each point is `benchmarks.train_step` in a fresh process (so its peak RSS is its own), once
with `model.remat=none` and once with each of `--remat`. The sequence length is the text
context (MLM: tokens per sequence; CLIP: caption length). Writes
results/scaling_<config>.md (a table), .jsonl (every record) and .png (the plot).
"""

import argparse
import json
import os
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def measure(config, overrides, steps):
    command = [sys.executable, "-m", "benchmarks.train_step", config, *overrides,
               "--steps", str(steps), "--warmup", "2", "--no-peak"]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def sweep(config, batches, lengths, remats, steps, base_batch, base_length):
    """Records for every (axis, value, remat): batch at the base length, length at the base batch."""
    points = [("batch", b, {"train.batch_size": b, "model.text.context_length": base_length})
              for b in batches]
    points += [("length", n, {"train.batch_size": base_batch, "model.text.context_length": n})
               for n in lengths]
    records = []
    for axis, value, setting in points:
        for remat in remats:
            overrides = [f"--config.{k}={v}" for k, v in {**setting, "model.remat": remat}.items()]
            record = measure(config, overrides, steps)
            record.update(axis=axis, value=value, remat=remat)
            print(json.dumps(record), flush=True)
            records.append(record)
    return records


def table(records, unit):
    rows = [f"| axis | value | remat | {unit} | step s | step temp MB | peak RSS MB | peak device MB | load |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['axis']} | {r['value']} | {r['remat']} | failed: {r['error'][:60]} | | | | | |")
            continue
        device = "" if r.get("peak_device_mb") is None else f"{r['peak_device_mb']:.0f}"
        rows.append(f"| {r['axis']} | {r['value']} | {r['remat']} | {r['throughput']:.1f} | "
                    f"{r['step_time_s']:.3f} | {r.get('step_temp_mb', 0):.0f} | {r['peak_rss_mb']:.0f} | {device} | "
                    f"{r.get('load_avg', 0):.1f} |")
    return "\n".join(rows)


def plot(records, unit, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex="col")
    memory_key = "peak_device_mb" if any(r.get("peak_device_mb") for r in records) else "peak_rss_mb"
    for col, axis in enumerate(("batch", "length")):
        for remat in dict.fromkeys(r["remat"] for r in records):
            rs = [r for r in records if r["axis"] == axis and r["remat"] == remat and "error" not in r]
            xs = [r["value"] for r in rs]
            axes[0, col].plot(xs, [r["throughput"] for r in rs], marker="o", label=f"remat={remat}")
            line, = axes[1, col].plot(xs, [r[memory_key] for r in rs], marker="o", label=f"remat={remat}")
            axes[1, col].plot(xs, [r.get("step_temp_mb") for r in rs], ls="--", color=line.get_color(),
                              label=f"remat={remat}, step temp (XLA)")
        axes[0, col].set_ylabel(unit)
        axes[1, col].set_ylabel("peak RSS MB" if memory_key == "peak_rss_mb" else "peak device MB")
        axes[1, col].set_xlabel("batch size" if axis == "batch" else "sequence length")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--batch", default="8,16,32,64", help="batch sizes (at the config's length)")
    p.add_argument("--length", default="32,64,128,256", help="sequence lengths (at the config's batch)")
    p.add_argument("--remat", default="full", help="remat policies besides 'none', comma-separated")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--replot", action="store_true", help="redraw the table and plot from the .jsonl")
    args = p.parse_args(argv)
    from benchmarks import workload
    from mmjax import config as config_lib
    config = config_lib.load(args.config)
    name = os.path.basename(args.config).removesuffix(".py")
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    base = os.path.join(args.out, f"scaling_{name}")
    if args.replot:
        with open(base + ".jsonl") as f:
            records = [json.loads(line) for line in f]
    else:
        records = sweep(args.config, ints(args.batch), ints(args.length),
                        ["none", *filter(None, args.remat.split(","))], args.steps,
                        config.train.batch_size, config.model.text.context_length)
    os.makedirs(args.out, exist_ok=True)
    unit = workload.unit(config)
    device = next((r["device"] for r in records if "device" in r), "?")
    with open(base + ".jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(base + ".md", "w") as f:
        f.write(f"# {name}: scaling on {device}\n\n{table(records, unit)}\n")
    plot(records, unit, f"{name} on {device}", base + ".png")
    print(f"wrote {base}.md, .jsonl, .png")


if __name__ == "__main__":
    main()
