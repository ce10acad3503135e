"""What every evaluator shares: its dataset streamed in batches sharded over the mesh, and
what it measured (`n`, the split) reported with its metrics."""

import functools
import sys

import flax.linen as nn
import jax
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.data import images, pipeline, sources
from mmjax.errors import ConfigError

MIN_EXAMPLES = 100   # a split with fewer gives a warning (an entry's `min_examples` option)


def serves(model) -> set:
    """The methods a model can run: its `serves` set when it declares one (a DualEncoder
    without an MLM head has an `mlm_logits` method it cannot run), else every method it has."""
    declared = getattr(model, "serves", None)
    return set(declared) if declared is not None else {m for m in dir(type(model)) if not m.startswith("_")}


class Evaluator:
    """Base class: `run(params) -> {metric: float}`, the same on every process.

    `spec` is the config entry (type, dataset, split, every, batch_size, seed, options);
    `run_setup` the train.setup.Run (task, model, tokenizer, mesh, rules).

    Whatever a subclass's `run` returns comes with what it measured: `n`, the examples of the
    entry's split it scored, and `n_<split>` for each split it read through `map_split` (the
    split's name is in the key: metric values stay numbers, which every metric writer takes).
    A split read with fewer than `min_examples` (option, default 100) examples gives a warning
    on stderr naming its size and the dataset's other splits with theirs, once per split.
    """

    needs = ()   # the model methods `run` calls
    _scored = None   # {split: examples scored} while `run` runs

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:
            cls.run = _reporting(cls.__dict__["run"])

    def __init__(self, run_setup, spec, data_dir):
        missing = [m for m in self.needs if m not in serves(run_setup.model)]
        if missing:
            raise ConfigError(
                f"evaluator type {spec['type']!r} needs a model with {', '.join(missing)}; task "
                f"{run_setup.config.task!r} builds a {type(run_setup.model).__name__}, which has "
                f"none: drop that entry from config.evals (or set evals = {{}} for the task's own)")
        self.setup, self.spec, self.data_dir = run_setup, dict(spec), data_dir
        self.every = int(self.spec["every"])
        self.dataset = sources.get(self.spec["dataset"], data_dir)
        self.min_examples = int(self.spec.get("min_examples", MIN_EXAMPLES))
        if self.min_examples < 0:
            raise ConfigError(f"evaluator entry option min_examples={self.min_examples} is "
                              f"negative; set it to 0 (no warning) or more")
        self._compiled, self._warned = {}, set()

    def run(self, params) -> dict:
        raise NotImplementedError

    def apply(self, params, inputs, method):
        """`model.apply` of the run's model (inside jitted functions)."""
        return self.setup.model.apply({"params": params}, *inputs, method=method)

    def _jit(self, fn, key=None):
        """fn jitted with a replicated output, traced under the mesh and rules (cached by key)."""
        key = fn if key is None else key
        if key not in self._compiled:
            mesh = self.setup.mesh
            jitted = jax.jit(fn, out_shardings=NamedSharding(mesh, P()))

            def call(*args):
                with jax.set_mesh(mesh), nn.logical_axis_rules(self.setup.rules):
                    return jitted(*args)
            self._compiled[key] = call
        return self._compiled[key]

    def _pad_to(self):
        """Rows of a process's batch must split over its devices on the batch axes."""
        mesh = self.setup.mesh
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        return max(1, shards // jax.process_count())

    def map_split(self, fn, params, spec, split=None, batch_size=None, rows=None):
        """{key: numpy [n, ...]} of `fn(params, batch, index) -> {key: [b, ...]}` over every
        example of the split, in the order of the examples' indices in the split (whatever
        the process count), with '_index' [n]: those indices.

        Each process reads and feeds only its share of each global batch; the outputs are
        gathered once per batch. `spec` is the batch spec (keys, per-example shapes); `rows`
        (ascending indices) reads only those records of the split."""
        def with_valid(params, batch, index):
            return fn(params, batch, index) | {"_valid": batch["_valid"], "_index": batch["_index"]}

        split = split or self.spec["split"]
        step = self._jit(with_valid, key=("split", fn))
        outputs = []
        batches = pipeline.eval_batches(
            self.spec["dataset"], data_dir=self.data_dir, split=split,
            spec=spec, tokenizer=self.setup.tokenizer,
            batch_size=max(1, (batch_size or self.spec["batch_size"]) // jax.process_count()),
            process_index=jax.process_index(), process_count=jax.process_count(),
            pad_to=self._pad_to(), rows=rows,
            image_options=images.ImageOptions.from_config(self.setup.config.data))
        for index, (local, valid) in enumerate(self._progress(batches, split)):
            batch = sharding.global_batch(local | {"_valid": valid}, self.setup.mesh)
            outputs.append(jax.device_get(step(params, batch, np.int32(index))))
        merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
        valid = merged.pop("_valid")
        # A global batch holds each process's block of rows: on P processes, rows p, p + P, ...
        # of the split sit together. Sorted by index, the rows are the same on any count.
        order = np.argsort(merged["_index"][valid], kind="stable")
        out = {k: v[valid][order] for k, v in merged.items()}
        self._measured(split, len(order))
        return out

    def _measured(self, split, count):
        """Records `count` examples scored of `split` for `run`'s report; warns (once per
        split, on process 0) when they are fewer than `min_examples`."""
        if self._scored is not None:
            self._scored[split] = count
        if count >= self.min_examples or split in self._warned:
            return
        self._warned.add(split)
        if jax.process_index() == 0:
            tqdm.tqdm.write(small_split_warning(self.spec, split, count, self.min_examples,
                                                self.dataset.split_sizes(self.data_dir)),
                            file=sys.stderr)

    def _report(self):
        """{'n': examples of the entry's split, 'n_<split>': of each split read}."""
        scored = self._scored or {}
        out = {"n": scored[self.spec["split"]]} if self.spec["split"] in scored else {}
        return out | {f"n_{split}": count for split, count in scored.items()}

    def _progress(self, batches, split):
        """`batches` with a progress bar on process 0 (stderr, cleared when done)."""
        return tqdm.tqdm(batches, desc=f"eval {self.spec['type']}:{self.spec['dataset']}:{split}",
                         unit="batch", leave=False, disable=jax.process_index() != 0)

    def map_rows(self, fn, params, rows):
        """fn(params, rows) on a host array that every process holds whole (class prompts),
        a batch_size chunk at a time split over the mesh's batch axes; returns numpy."""
        mesh = self.setup.mesh
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        chunk = -(-max(self.spec["batch_size"], shards) // shards) * shards
        outputs = []
        for start in range(0, len(rows), chunk):
            block = rows[start:start + chunk]
            padded = np.concatenate([block, np.repeat(block[:1], chunk - len(block), axis=0)])
            array = jax.make_array_from_callback(padded.shape, sharding.batch_sharding(mesh),
                                                 lambda index, padded=padded: padded[index])
            outputs.append(np.asarray(jax.device_get(self._jit(fn)(params, array)))[:len(block)])
        return np.concatenate(outputs)


def _reporting(run):
    """`run` returning its metrics with the base class's report of what it measured."""
    @functools.wraps(run)
    def reported(self, params):
        if self._scored is not None:   # a subclass's run calling its parent's: reported once
            return run(self, params)
        self._scored = {}
        try:
            return dict(run(self, params)) | self._report()
        finally:
            self._scored = None
    return reported


def small_split_warning(spec, split, count, minimum, sizes) -> str:
    """The line a split with fewer than `minimum` examples prints."""
    others = ", ".join(f"{name} ({size})" for name, size in sizes.items() if name != split)
    size = f" of {sizes[split]}" if split in sizes and sizes[split] != count else ""
    return (f"mmjax: warning: evaluator {spec['type']}:{spec['dataset']} scored {count}{size} "
            f"examples of split {split!r}, fewer than min_examples={minimum}: its metrics are "
            f"noisy; the dataset's other splits: {others or 'none that it lists'} (set the "
            f"entry's split, e.g. --evals {spec['type']}:{spec['dataset']}:SPLIT, or its "
            f"min_examples option)")
