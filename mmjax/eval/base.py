"""What every evaluator shares: its dataset streamed in batches sharded over the mesh."""

import flax.linen as nn
import jax
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.data import images, pipeline, sources
from mmjax.errors import ConfigError


def serves(model) -> set:
    """The methods a model can run: its `serves` set when it declares one (a DualEncoder
    without an MLM head has an `mlm_logits` method it cannot run), else every method it has."""
    declared = getattr(model, "serves", None)
    return set(declared) if declared is not None else {m for m in dir(type(model)) if not m.startswith("_")}


class Evaluator:
    """Base class: `run(params) -> {metric: float}`, the same on every process.

    `spec` is the config entry (type, dataset, split, every, batch_size, seed, options);
    `run_setup` the train.setup.Run (task, model, tokenizer, mesh, rules).
    """

    needs = ()   # the model methods `run` calls

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
        self._compiled = {}

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
        example of the split, in the order the global batches hold them.

        Each process reads and feeds only its share of each global batch; the outputs are
        gathered once per batch. `spec` is the batch spec (keys, per-example shapes); `rows`
        (ascending indices) reads only those records of the split."""
        def with_valid(params, batch, index):
            return fn(params, batch, index) | {"_valid": batch["_valid"]}

        step = self._jit(with_valid, key=("split", fn))
        outputs = []
        batches = pipeline.eval_batches(
            self.spec["dataset"], data_dir=self.data_dir, split=split or self.spec["split"],
            spec=spec, tokenizer=self.setup.tokenizer,
            batch_size=max(1, (batch_size or self.spec["batch_size"]) // jax.process_count()),
            process_index=jax.process_index(), process_count=jax.process_count(),
            pad_to=self._pad_to(), image_options=images.ImageOptions.from_config(self.setup.config.data),
            rows=rows)
        for index, (local, valid) in enumerate(self._progress(batches, split or self.spec["split"])):
            batch = sharding.global_batch(local | {"_valid": valid}, self.setup.mesh)
            outputs.append(jax.device_get(step(params, batch, np.int32(index))))
        merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
        valid = merged.pop("_valid")
        return {k: v[valid] for k, v in merged.items()}

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
