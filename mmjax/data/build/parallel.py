"""Runs the per-record work in worker processes, yielding results in the source's order."""

from __future__ import annotations

import collections
import functools
import multiprocessing

from mmjax.data.build.process import process_chunk
from mmjax.data.build.records import Source

CHUNK = 32                    # Records per task sent to a worker.
IN_FLIGHT_PER_WORKER = 4      # Chunks queued per worker: bounds the image bytes held in flight.


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def processed(source: Source, max_side: int | None, workers: int):
    """Examples and skips in the source's order, whatever the number of workers."""
    work = functools.partial(process_chunk, features=source.features, max_side=max_side)
    if workers == 1:
        for chunk in _chunks(source.items, CHUNK):
            yield from work(chunk)
        return
    # spawn: the CLI has JAX (threads) imported, and forking a threaded process can hang.
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
        pending = collections.deque()
        for chunk in _chunks(source.items, CHUNK):
            pending.append(pool.apply_async(work, (chunk,)))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
