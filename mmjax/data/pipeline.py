"""Input pipelines: this process's rows of each global batch, and one pass over a split for
evaluation.

The global batch is a function of the seed and the step alone. Each training dataset is
shuffled (afresh every epoch) and repeated as a grain `MapDataset`; a mixture interleaves
them by weight (`grain.MapDataset.mix`); global batch s holds examples [s*B, (s+1)*B) of
that one stream, and process p of P reads the rows [p*B/P, (p+1)*B/P) of it. Random
transforms (crops, caption templates) draw from a generator seeded by (seed, dataset,
position in the stream), so no result depends on how many processes or workers read. The
iterator's state is the number of global batches read, which resumes on any process count.

A record that fails to decode (a corrupt image, text that is not UTF-8 or empty) is
replaced by the next record of the same stream and counted, in random-access and streamed
reads alike: batches carry '_skipped' (int [b]) and '_bad' (a description per row, '' for
good ones), which the loop reports as `data/skipped` and turns into an error past
`data.max_bad_fraction`. Evaluation leaves such a record out (valid=False) and says how many.
MAX_REPLACEMENTS bad records in a row are one BadData line (mmjax/data/bad_records.py).

MLM / LM on a text-only task can pack (`data.pack`): documents become `tokens [SEP]`, are
joined and cut into rows of L - 1 tokens, each prefixed with [CLS]: no padding, and a document
longer than a row continues in the next. Packing goes window by window of the global stream
(`data.pack_window` rows of its own documents, mmjax/data/packing.py), so each process
tokenises only the documents of its own rows and a resumed run starts at its position.
"""

from __future__ import annotations

import json
import logging
import math

import grain
import numpy as np

from mmjax.config import parse_mixture
from mmjax.data import images, packing, sentence_pairs, sources, tagging, transforms
from mmjax.data.bad_records import BAD_RECORD_ERRORS, MAX_REPLACEMENTS, broken, decoded
from mmjax.errors import ConfigError

# Records are small and local: reading them in the consuming thread beats reader threads
# fighting over the GIL (2.0 s vs 3.6 s for 100 batches of 64 digits on this 2-core box).
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
log = logging.getLogger(__name__)


def _check_features(dataset, name, spec):
    missing = [k for k in spec if k in ('image', 'text', 'label') and k not in dataset.features]
    if missing:
        raise ConfigError(f"dataset {name!r} has no {', '.join(missing)} (it gives "
                          f"{', '.join(dataset.features) or 'nothing'}); the task needs "
                          f"{', '.join(spec)}: pick a dataset that has them")


def example_ops(dataset, spec, image_options, train, source=None, tokenizer=None):
    """The dataset's record -> example transforms, then the image transform the spec needs, or
    the sentence pairs (B drawn from `source`, the split's records) a spec with token types does,
    or the tagged rows a spec with tags does."""
    ops = list(dataset.example_ops(train=train))
    if 'image' in spec:
        ops.append(images.TrainImage(image_options) if train else images.EvalImage(image_options))
    if sentence_pairs.TYPES in spec:
        ops.append(sentence_pairs.op(dataset, source, tokenizer, spec))
    if tagging.TAGS in spec:
        ops.append(tagging.op(dataset, tokenizer, spec))
    return ops


class _Examples(grain.MapDataset):
    """Element i: record i of the parent through `ops`, seeded by (seed, i); a bad record is
    replaced by the next good one (i + 1, i + 2, ...) and counted in '_skipped' / '_bad'."""

    def __init__(self, parent, ops, seed, name):
        super().__init__(parent)
        self._ops, self._seed, self._name = ops, tuple(seed), name

    def __len__(self):
        return len(self._parent)

    def __str__(self):
        return f'Examples({self._name})'

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._example(index, self._parent[index])

    def _getitems(self, indices):
        return [self._example(i, r) for i, r in zip(indices, self._parent._getitems(list(indices)))]

    def _example(self, index, record):
        first_error = None
        for offset in range(MAX_REPLACEMENTS):
            position = index + offset
            try:
                if offset:
                    record = self._parent[position % len(self._parent)]
                example = transforms.apply_one(self._ops, record, (*self._seed, position))
            except BAD_RECORD_ERRORS as err:
                first_error = first_error or f'{self._name} record at stream position {position}: {err}'
                continue
            return example | {'_skipped': np.int32(offset), '_bad': first_error or ''}
        raise broken(self._name, first_error)


class _LocalBatches(grain.MapDataset):
    """Element s: process p's rows of global batch s, collated. Of the global stream's
    examples [s*B, (s+1)*B) process p holds [s*B + p*b, s*B + (p+1)*b), b = B / P, read with
    one batched request."""

    def __init__(self, parent, global_batch, process_index, process_count, collate):
        super().__init__(parent)
        self._global, self._p, self._collate = global_batch, process_index, collate
        self._local = global_batch // process_count

    def __len__(self):
        return len(self._parent) // self._global

    def __str__(self):
        return f'LocalBatches(p={self._p})'

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        first = index * self._global + self._p * self._local
        return self._collate(self._parent._getitems(list(range(first, first + self._local))))


def global_stream(mixture, *, data_dir, split, spec, seed, image_options, num_epochs=None,
                  shuffle=True, train=True, tokenizer=None) -> grain.MapDataset:
    """Example k of the global training order (a MapDataset; infinite unless num_epochs)."""
    streams = []
    for k, (name, _) in enumerate(mixture):
        dataset = sources.get(name, data_dir)
        _check_features(dataset, name, spec)
        if not dataset.random_access:
            raise ConfigError(f"dataset {name!r} is streamed; a mixture or a process-independent "
                              f"order needs random access (build it with `mmjax data build`)")
        source = dataset.source(data_dir, split)
        stream = grain.MapDataset.source(source)
        if shuffle:
            stream = stream.shuffle(seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
        stream = stream.repeat(num_epochs)
        streams.append(_Examples(stream, example_ops(dataset, spec, image_options, train, source,
                                                     tokenizer), (seed, k), name))
    if len(streams) == 1:
        return streams[0]
    return grain.MapDataset.mix(streams, [w for _, w in mixture])


class TrainBatches:
    """Iterator over this process's rows of each global batch (a dict of numpy arrays).

    `get_state()` -> JSON bytes (global batches read, and what they were read from);
    `set_state(s)` resumes exactly, on any process count that divides the batch. `packed`:
    the packing.PackedRows of packed rows (its `counts`), else None."""

    def __init__(self, make_iterator, identity: dict, packed=None):
        self._make, self._identity, self.packed = make_iterator, identity, packed
        self._read = 0
        self._it = make_iterator(0)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self._read += 1
        return batch

    def get_state(self) -> bytes:
        return json.dumps({'batches_read': self._read, **self._identity}).encode()

    def set_state(self, state: bytes) -> None:
        saved = json.loads(state)
        if 'batches_read' not in saved:
            raise ValueError('the saved data position is from an older mmjax input pipeline '
                             '(a per-process grain state); resume with that version, or start '
                             'a new workdir')
        changed = {k: (saved.get(k), v) for k, v in self._identity.items() if saved.get(k) != v}
        if changed:
            raise ValueError(f'the saved data position is for another input: {changed} '
                             f'(saved, now)')
        self._read = int(saved['batches_read'])
        self._it = self._make(self._read)


def _rows_iterator(stream, *, global_batch, process_index, process_count, collate,
                   worker_count):
    def make(start):
        batched = _LocalBatches(stream, global_batch, process_index, process_count, collate)
        it = batched[start:].to_iter_dataset(READ_OPTIONS)
        if worker_count > 0:
            _absl_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        return iter(it)
    return make


def _absl_parsed():
    from absl import flags  # grain worker processes read absl flags.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def batches(train, *, data_dir, split, spec, tokenizer, batch_size, seed, image_options=None,
            num_epochs=None, shuffle=True, process_index=0, process_count=1, worker_count=0,
            pack=False, pack_window=8):
    """TrainBatches over dataset or mixture `train` ('NAME' / 'A:0.7,B:0.3'): this process's
    rows of global batches of `batch_size`. num_epochs=None repeats forever. `pack`: packed
    text rows, `pack_window` rows to a packing window (mmjax/data/packing.py)."""
    if batch_size % process_count:
        raise ConfigError(f"train.batch_size={batch_size} does not split over {process_count} "
                          f"processes; use a multiple of {process_count}")
    image_options = image_options or images.ImageOptions()
    mixture = parse_mixture(train)
    identity = {'train': train, 'seed': seed, 'batch_size': batch_size, 'pack': pack}
    first = sources.get(mixture[0][0], data_dir)
    if not first.random_access:
        if len(mixture) > 1 or pack:
            raise ConfigError(f"dataset {mixture[0][0]!r} is streamed: it cannot be mixed or packed")
        return _stream_batches(first, mixture[0][0], data_dir=data_dir, split=split, spec=spec,
                               tokenizer=tokenizer, batch_size=batch_size, seed=seed,
                               image_options=image_options, num_epochs=num_epochs,
                               process_index=process_index, process_count=process_count)
    stream = global_stream(mixture, data_dir=data_dir, split=split, spec=spec, seed=seed,
                           image_options=image_options, num_epochs=num_epochs, shuffle=shuffle,
                           tokenizer=tokenizer)
    if pack:
        if set(spec) != {'text'}:
            raise ConfigError(f"data.pack packs text-only batches; this task's batch has "
                              f"{', '.join(spec)}: set data.pack=False")
        stream = packing.PackedRows(stream, tokenizer, width=spec['text'].shape[0] - 1,
                                    rows=pack_window)
        identity['pack_window'] = [stream.rows, stream.documents]
        collate = packing.Collate(tokenizer.bos_id)
    else:
        collate = transforms.Collate(spec, tokenizer, image_options)
    make = _rows_iterator(stream, global_batch=batch_size, process_index=process_index,
                          process_count=process_count, collate=collate, worker_count=worker_count)
    return TrainBatches(make, identity, packed=stream if pack else None)


def _stream_batches(dataset, name, *, data_dir, split, spec, tokenizer, batch_size, seed,
                    image_options, num_epochs, process_index, process_count):
    _check_features(dataset, name, spec)
    collate = transforms.Collate(spec, tokenizer, image_options)
    return StreamLoader(dataset.source(data_dir, split),
                        example_ops(dataset, spec, image_options, train=True),
                        grain.transforms.Batch(batch_size // process_count, drop_remainder=True,
                                               batch_fn=collate),
                        seed=seed, num_epochs=num_epochs, process_index=process_index,
                        process_count=process_count, name=name)


class StreamLoader:
    """Batches of a streamed (iterable, not random-access) source, in stored order.

    Process p keeps records p, p + P, ... Random transforms draw from a generator seeded by
    (seed, epoch, record index). The state is the number of records read; `set_state`
    re-reads up to it, which is exact but costs a pass over what was read, and it resumes
    only on the same process count.
    """

    def __init__(self, source, ops, batch, *, seed, num_epochs, process_index, process_count,
                 name='stream'):
        self._source, self._seed, self._num_epochs = source, seed, num_epochs
        self._ops, self._batch, self._name = ops, batch, name
        self._p, self._count = process_index, process_count
        self._position = (0, 0)
        self._examples = self._decode((0, 0))

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

    def _decode(self, start):
        return decoded(self._ops, (((self._seed, *position), record)
                                    for position, record in self._walk(start)), self._name)

    def __iter__(self):
        return self

    def __next__(self):
        """The next batch; a bad record is replaced by the next one and counted in the row's
        '_skipped' / '_bad', as in the random-access read."""
        examples, skipped, first_bad = [], 0, ''
        while len(examples) < self._batch.batch_size:
            (_, epoch, index), example, error = next(self._examples)
            self._position = (epoch, index + 1)
            if example is None:
                skipped, first_bad = skipped + 1, first_bad or error
                continue
            examples.append(example | {'_skipped': np.int32(skipped), '_bad': first_bad})
            skipped, first_bad = 0, ''
        return self._batch.batch_fn(examples)

    def get_state(self) -> bytes:
        return json.dumps({'stream_position': list(self._position), 'process_count': self._count}).encode()

    def set_state(self, state: bytes) -> None:
        saved = json.loads(state)
        if saved.get('process_count', self._count) != self._count:
            raise ValueError(f"the saved position in a streamed dataset was read by "
                             f"{saved['process_count']} processes; resume on that many")
        self._position = tuple(saved['stream_position'])
        self._examples = self._decode(self._position)


def eval_batches(name, *, data_dir, split, spec, tokenizer, batch_size, process_index=0,
                 process_count=1, pad_to=1, image_options=None, rows=None):
    """One pass over a split for evaluation: yields (this process's batch, valid [b] bool).

    Process p reads records p, p + P, ...; every process yields the same number of batches
    of `batch_size` rows (rounded up to a multiple of `pad_to`), the last ones padded with
    copies of the first row and valid=False, so a global batch always fills the mesh. The
    batch also holds '_index' (int32 [b]): each row's position in the split, so per-example
    randomness (eval masking) does not depend on the batch size or the process count.
    Records are read batch by batch, never the whole split at once. `rows` (ascending record
    indices, random-access datasets only) reads those records instead of the whole split. A
    record that fails to decode is a row with valid=False, counted in one warning.
    """
    image_options = image_options or images.ImageOptions()
    dataset = sources.get(name, data_dir)
    _check_features(dataset, name, spec)
    source = dataset.source(data_dir, split) if dataset.random_access else None
    ops = example_ops(dataset, spec, image_options, train=False, source=source, tokenizer=tokenizer)
    collate = transforms.Collate(spec, tokenizer, image_options)
    batch_size = math.ceil(batch_size / pad_to) * pad_to
    if dataset.random_access:
        wanted = range(len(source)) if rows is None else rows
        total = len(wanted)
        indices = wanted[process_index::process_count]
        mine = (source[i] for i in indices)
    elif rows is not None:
        raise ConfigError(f'dataset {name!r} is streamed: it cannot read a subset of its rows')
    else:
        total = sum(1 for _ in dataset.records(data_dir, split))  # a streamed split: count it
        indices = range(process_index, total, process_count)
        mine = (r for i, r in enumerate(dataset.records(data_dir, split))
                if i % process_count == process_index)
    num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
    # Seeded by the record's index in the split: the same on any process count.
    examples = decoded(ops, (((0, int(i)), r) for i, r in zip(indices, mine)), name)
    pad, bad, first_error = None, 0, ''
    for _ in range(num_batches):
        chunk = [item for _, item in zip(range(batch_size), examples)]
        if pad is None:  # any real example: padding rows copy it (and are ignored)
            pad = next((e for _, e, _ in chunk if e is not None), None)
        if pad is None:  # this process's share of the split is used up, or bad so far
            everything = enumerate(dataset.records(data_dir, split))
            pad = next(e for _, e, _ in decoded(ops, (((0, i), r) for i, r in everything), name)
                       if e is not None)
        valid = np.zeros(batch_size, bool)
        valid[:len(chunk)] = [e is not None for _, e, _ in chunk]
        index = np.zeros(batch_size, np.int32)
        index[:len(chunk)] = [key[1] for key, _, _ in chunk]
        bad += len(chunk) - int(valid.sum())
        first_error = first_error or next((err for _, _, err in chunk if err), '')
        rows = [pad if e is None else e for _, e, _ in chunk]
        yield collate(rows + [pad] * (batch_size - len(rows))) | {'_index': index}, valid
    if bad:  # left out of the evaluation (valid=False), as training skips them
        log.warning('%d of the %d records of %s:%s this process read failed to decode and were '
                    'left out of the evaluation, e.g. %s; `mmjax data build` drops bad records',
                    bad, len(indices), name, split, first_error)


def train_batches(run, data_dir, process_index, process_count):
    """This process's rows of each global training batch of `run` (a train.setup.Run)."""
    config = run.config
    return batches(config.data.train, data_dir=data_dir, split='train', spec=run.task.batch_spec(),
                   tokenizer=run.tokenizer, batch_size=config.train.batch_size, seed=config.seed,
                   image_options=images.ImageOptions.from_config(config.data),
                   process_index=process_index, process_count=process_count,
                   worker_count=config.data.get('worker_count', 0),
                   pack=config.data.get('pack', False),
                   pack_window=config.data.get('pack_window', 8))
