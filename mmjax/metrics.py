"""Metric writers: metrics.jsonl, TensorBoard events, and a console progress bar."""

import json
import os
import time

import numpy as np
import tqdm


class MetricWriter:
    """Writes one JSON object per logged step / evaluation to WORKDIR/metrics.jsonl and the
    same scalars to TensorBoard. Only process 0 writes (`enabled=False` elsewhere).

    A run resuming at `start_step` first drops the records of later steps (written by a run
    that died after its last checkpoint; this run writes them again), so the file holds each
    step once."""

    def __init__(self, workdir, total_steps, start_step=0, enabled=True):
        self.enabled = enabled
        self.jsonl = self.tensorboard = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            drop_records_after(path, start_step)
            self.jsonl = open(path, "a")
            from tensorboardX import SummaryWriter
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not enabled,
                             dynamic_ncols=True, unit="step")

    def write(self, step, metrics):
        record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        if self.enabled:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
            for key, value in record.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, step)
        return record

    def progress(self, step, loss, examples_per_s):
        self.bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{examples_per_s:.0f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def print(self, text):
        if self.enabled:
            self.bar.write(text)

    def close(self):
        self.bar.close()
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def drop_records_after(path, step):
    """Rewrites a JSONL file without the records of steps after `step` and without a torn
    last line (a run killed mid-write); leaves it untouched when there is nothing to drop."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and record.get("step", 0) <= step:
            keep.append(line)
    if len(keep) < len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


class Throughput:
    """Examples per second between two calls (one host sync per logged step, not per step)."""

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.time, self.step = time.perf_counter(), None

    def __call__(self, step):
        now = time.perf_counter()
        rate = 0.0 if self.step is None else self.batch_size * (step - self.step) / (now - self.time)
        self.time, self.step = now, step
        return rate


def _scalar(value):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()
