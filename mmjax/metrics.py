"""Metric writers: metrics.jsonl, TensorBoard events, and a console progress bar."""

import contextlib
import json
import time

import jax
import numpy as np
import tqdm

from mmjax import paths


class MetricWriter:
    """Writes one JSON object per logged step / evaluation to WORKDIR/metrics.jsonl and the
    same scalars to TensorBoard (strings as TensorBoard text). Only process 0 writes (`enabled=False` elsewhere).

    A run resuming at `start_step` first drops the records of later steps (written by a run
    that died after its last checkpoint; this run writes them again), so the file holds each
    step once."""

    def __init__(self, workdir, total_steps, start_step=0, enabled=True):
        self.enabled = enabled
        self.jsonl = self.tensorboard = None
        if enabled:
            self.jsonl = JsonlFile(paths.resolve(workdir) / "metrics.jsonl", start_step)
            from tensorboardX import SummaryWriter  # writes gs:// itself (google-cloud-storage)
            self.tensorboard = SummaryWriter(paths.join(workdir, "tensorboard"))
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not enabled,
                             dynamic_ncols=True, unit="step")

    def write(self, step, metrics):
        record = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        if self.enabled:
            self.jsonl.write(json.dumps(record) + "\n")
            for key, value in record.items():
                if isinstance(value, str):   # an evaluator's text (eval/samples)
                    self.tensorboard.add_text(key, value, step)
                elif key != "step":
                    self.tensorboard.add_scalar(key, value, step)
        return record

    def flush(self):
        """Makes what was written durable (the loop calls it at each checkpoint save)."""
        if self.enabled:
            self.jsonl.flush()
            self.tensorboard.flush()

    def progress(self, step, loss, examples_per_s):
        self.bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{examples_per_s:.0f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def print(self, text):
        if self.enabled:
            self.bar.write(text)

    def close(self):
        self.bar.close()
        if self.enabled:
            self.jsonl.flush()
            self.tensorboard.close()


class JsonlFile:
    """metrics.jsonl without the records of steps after `start_step` (a run that died after
    its last checkpoint wrote them; the resumed run writes them again) or a torn last line.

    On local disk it is appended to and flushed line by line. An object in a bucket cannot
    be appended to: the lines are kept and the whole file is uploaded (one atomic write) at
    most every `upload_every_s` seconds, at `flush()` (each checkpoint save) and at the end,
    so a kill loses at most the lines after the last checkpoint, which the resumed run
    writes again."""

    def __init__(self, path, start_step=0, upload_every_s=60.0):
        self.path, self.remote = path, paths.is_remote(path)
        self.upload_every_s, self.uploaded = upload_every_s, time.monotonic()
        drop_records_after(path, start_step)
        if self.remote:
            self.lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a")

    def write(self, line):
        if not self.remote:
            self.file.write(line)
            self.file.flush()
            return
        self.lines.append(line)
        if time.monotonic() - self.uploaded > self.upload_every_s:
            self.flush()

    def flush(self):
        if self.remote:
            paths.write_text(self.path, "".join(self.lines))
            self.uploaded = time.monotonic()
        else:
            self.file.flush()


def kept_records(lines, step):
    """The complete JSON lines of steps up to `step`."""
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and record.get("step", 0) <= step:
            keep.append(line)
    return keep


def drop_records_after(path, step):
    """Rewrites a JSONL file without the records of steps after `step` and without a torn
    last line; leaves it untouched when there is nothing to drop."""
    path = paths.resolve(path)
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        keep = kept_records(lines, step)
        if len(keep) < len(lines):
            paths.write_text(path, "".join(keep))


class Throughput:
    """Examples per second of training between two calls (one host sync per logged step, not
    per step): time spent `paused` (evaluating, saving) is left out."""

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.time, self.step = time.perf_counter(), None

    def __call__(self, step):
        now = time.perf_counter()
        rate = 0.0 if self.step is None else self.batch_size * (step - self.step) / (now - self.time)
        self.time, self.step = now, step
        return rate

    @contextlib.contextmanager
    def paused(self, pending=None):
        """Leaves the time inside the block out of the rate; `pending` (the train state) is
        waited for first, so steps still running on the device count as training."""
        if pending is not None:
            jax.block_until_ready(pending)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.time += time.perf_counter() - start


def _scalar(value):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()
