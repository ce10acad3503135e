"""Input pipelines: this process's share of a dataset as batches of a task's batch spec.

`batches(...)` returns an iterator: `next(it)` gives this process's batch as a dict of
numpy arrays; `it.get_state()` returns the position as JSON `bytes` and `it.set_state(s)`
on an iterator built with the same arguments resumes it exactly. Random-access datasets go
through a `grain.DataLoader` (seeded shuffle, per-process shard; the state records the
sampler and source, so restoring into a differently configured pipeline raises
ValueError); streamed ones through `StreamLoader` (resumed by re-reading up to the
position). `eval_batches` walks a split once, padded to whole batches, for evaluators.
"""

from __future__ import annotations

import json
import math

import grain
import numpy as np

from mmjax.config import ConfigError
from mmjax.data import sources, transforms

# Records are small and local: reading them in the consuming thread beats reader threads
# fighting over the GIL (2.0 s vs 3.6 s for 100 batches of 64 digits on this 2-core box).
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _check_features(dataset, name, spec):
    missing = [k for k in spec if k in ('image', 'text', 'label') and k not in dataset.features]
    if missing:
        raise ConfigError(f"dataset {name!r} has no {', '.join(missing)} (it gives "
                          f"{', '.join(dataset.features) or 'nothing'}); the task needs "
                          f"{', '.join(spec)}: pick a dataset that has them")


def batches(name, *, data_dir, split, spec, tokenizer, batch_size, seed, num_epochs=None,
            shuffle=True, process_index=0, process_count=1, worker_count=0):
    """This process's `batch_size` examples of each global batch of dataset `name`.

    The sampler walks one global order (reshuffled every epoch from `seed`) and each process
    keeps every `process_count`-th element of it, so the processes never overlap and
    together cover each epoch (less a remainder smaller than `process_count`).
    num_epochs=None repeats forever; an epoch's last partial batch is dropped.
    """
    dataset = sources.get(name)
    _check_features(dataset, name, spec)
    source = dataset.source(data_dir, split)
    operations = [*dataset.example_ops(train=True),
                  grain.transforms.Batch(batch_size=batch_size, drop_remainder=True,
                                         batch_fn=transforms.Collate(spec, tokenizer))]
    if not dataset.random_access:
        return StreamLoader(source, operations, seed=seed, num_epochs=num_epochs,
                            process_index=process_index, process_count=process_count)
    if worker_count > 0:
        from absl import flags  # grain worker processes read absl flags.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    shard = grain.sharding.ShardOptions(
        shard_index=process_index, shard_count=process_count, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=grain.sharding.NoSharding(), shuffle=shuffle,
        num_epochs=num_epochs, seed=seed)
    loader = grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                              shard_options=shard, worker_count=worker_count,
                              read_options=READ_OPTIONS)
    return iter(loader)


class StreamLoader:
    """Batches of a streamed (iterable, not random-access) source, in stored order.

    Process p keeps records p, p + P, ... Random transforms draw from a generator seeded by
    (seed, epoch, record index). The state is the number of records read; `set_state`
    re-reads up to it, which is exact but costs a pass over what was read.
    """

    def __init__(self, source, operations, *, seed, num_epochs, process_index, process_count):
        self._source, self._seed, self._num_epochs = source, seed, num_epochs
        *self._ops, self._batch = operations
        self._p, self._count = process_index, process_count
        self._position = (0, 0)
        self._records = self._walk((0, 0))

    def _walk(self, start):
        epoch = start[0]
        while self._num_epochs is None or epoch < self._num_epochs:
            index = -1
            for index, record in enumerate(self._source):
                if index % self._count == self._p and (epoch, index) >= tuple(start):
                    yield (epoch, index), record
            if index < 0:
                raise ValueError(f"streamed source {self._source!r} gave no records in epoch {epoch}: "
                                 f"a dataset's source must be an iterable that can be walked again "
                                 f"(not a generator that is used up)")
            epoch += 1

    def __iter__(self):
        return self

    def __next__(self):
        examples = []
        while len(examples) < self._batch.batch_size:
            (epoch, index), record = next(self._records)
            examples.append(transforms.apply_one(self._ops, record, (self._seed, epoch, index)))
            self._position = (epoch, index + 1)
        return self._batch.batch_fn(examples)

    def get_state(self) -> bytes:
        return json.dumps({'stream_position': list(self._position), 'process_count': self._count}).encode()

    def set_state(self, state: bytes) -> None:
        position = json.loads(state)['stream_position']
        self._position = tuple(position)
        self._records = self._walk(self._position)


def eval_batches(name, *, data_dir, split, spec, tokenizer, batch_size, process_index=0,
                 process_count=1, pad_to=1):
    """One pass over a split for evaluation: yields (this process's batch, valid [b] bool).

    Process p reads records p, p + P, ...; every process yields the same number of batches
    of `batch_size` rows (rounded up to a multiple of `pad_to`), the last ones padded with
    copies of the first row and valid=False, so a global batch always fills the mesh. The
    batch also holds '_index' (int32 [b]): each row's position in the split, so per-example
    randomness (eval masking) does not depend on the batch size or the process count.
    Records are read batch by batch, never the whole split at once.
    """
    dataset = sources.get(name)
    _check_features(dataset, name, spec)
    ops, collate = dataset.example_ops(train=False), transforms.Collate(spec, tokenizer)
    batch_size = math.ceil(batch_size / pad_to) * pad_to
    if dataset.random_access:
        source = dataset.source(data_dir, split)
        total = len(source)
        indices = range(process_index, total, process_count)
        mine = (source[i] for i in indices)
    else:
        total = sum(1 for _ in dataset.records(data_dir, split))  # a streamed split: count it
        indices = range(process_index, total, process_count)
        mine = (r for i, r in enumerate(dataset.records(data_dir, split))
                if i % process_count == process_index)
    num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
    examples, pad, position = transforms.apply(ops, mine), None, 0
    for _ in range(num_batches):
        chunk = [e for _, e in zip(range(batch_size), examples)]
        valid = np.arange(batch_size) < len(chunk)
        index = np.zeros(batch_size, np.int32)
        index[:len(chunk)] = indices[position:position + len(chunk)]
        position += len(chunk)
        if pad is None:  # any real example: padding rows copy it (and are ignored)
            pad = chunk[0] if chunk else next(transforms.apply(ops, iter(dataset.records(data_dir, split))))
        yield collate(chunk + [pad] * (batch_size - len(chunk))) | {'_index': index}, valid


def train_batches(run, data_dir, process_index, process_count):
    """This process's rows of each global training batch of `run` (a train.setup.Run)."""
    config = run.config
    names = tuple(config.data.datasets)
    if len(names) != 1:
        raise ConfigError(f"data.datasets={names}: training reads one dataset for now; "
                          f"name one (mixtures with weights are the next step of the data layer)")
    return batches(names[0], data_dir=data_dir, split='train', spec=run.task.batch_spec(),
                   tokenizer=run.tokenizer, batch_size=config.train.batch_size // process_count,
                   seed=config.seed, process_index=process_index, process_count=process_count,
                   worker_count=config.data.get('worker_count', 0))
