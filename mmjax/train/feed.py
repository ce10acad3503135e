"""The loop's data feed: global batches made ahead in a thread, the time the device waits
for them, and the count of bad records the pipeline skipped.

`train/data_wait_frac` is the share of wall time the device sat idle waiting for the next
batch: the loop dispatches steps asynchronously and usually runs ahead of the device, so the
time the host blocks on the queue is not the measure; what counts is the part of that wait
after the last dispatched step finished (polled every millisecond). Near 0 when the input
keeps up, near 1 when the step waits for data.
"""

from __future__ import annotations

import queue
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax import sharding
from mmjax.errors import BadData


class Feed:
    """`next()` -> (global batch, data state after it); `stats()` at log steps (a collective
    when there are several processes: every process calls it at the same steps)."""

    def __init__(self, batches, mesh, max_bad_fraction=0.01, depth=2):
        self._batches, self._mesh, self._max_bad = batches, mesh, max_bad_fraction
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._wait, self._since = 0.0, time.perf_counter()
        self._rows = self._skipped = 0
        self._examples = []
        self._thread = threading.Thread(target=self._produce, daemon=True, name='mmjax-feed')
        self._thread.start()

    def _produce(self):
        try:
            while not self._stop.is_set():
                local = next(self._batches)
                skipped, bad = local.pop('_skipped', None), local.pop('_bad', None)
                item = (sharding.global_batch(local, self._mesh), self._batches.get_state(),
                        skipped, bad)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the loop, which raises it
            self._queue.put(err)

    def next(self, in_flight=None):
        """The next (global batch, data state); `in_flight` is an output of the last step
        dispatched (the device is idle once it is ready)."""
        leaves = [x for x in jax.tree.leaves(in_flight) if hasattr(x, 'is_ready')]
        idle_since = None
        while True:
            try:
                item = self._queue.get(timeout=0.001)
                break
            except queue.Empty:
                if idle_since is None and all(x.is_ready() for x in leaves):
                    idle_since = time.perf_counter()
        if idle_since is not None:
            self._wait += time.perf_counter() - idle_since
        if isinstance(item, BaseException):
            raise item
        batch, state, skipped, bad = item
        if skipped is not None:
            self._rows += len(skipped)
            self._skipped += int(np.sum(skipped))
            if len(self._examples) < 3:
                self._examples += [str(b) for b in bad if b][:3 - len(self._examples)]
        return batch, state

    def stats(self) -> dict:
        """{'train/data_wait_frac', 'data/skipped'} since the last call / in all; raises
        BadData past the allowed fraction of bad records."""
        now = time.perf_counter()
        frac = self._wait / max(now - self._since, 1e-9)
        self._wait, self._since = 0.0, now
        counts = np.asarray([self._skipped, self._rows], np.int64)
        if jax.process_count() > 1:
            counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
        skipped, rows = int(counts[0]), int(counts[1])
        read = skipped + rows
        if skipped >= 10 and skipped / read > self._max_bad:  # a few early ones are noise
            raise BadData(
                f"{skipped} of {read} records read so far failed to decode "
                f"({skipped / read:.1%} > data.max_bad_fraction={self._max_bad}), e.g. "
                f"{'; '.join(self._examples) or 'on another process'}: rebuild the dataset with "
                f"`mmjax data build` (it drops bad records) or raise data.max_bad_fraction")
        return {'train/data_wait_frac': frac, 'data/skipped': skipped}

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
