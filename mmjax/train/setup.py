"""One run setup: config -> Run (task, mesh, rules, model, optimizer, abstract state, shardings).

Training, evaluation, export/import, the benchmarks and the tests all start here, so the
sequence mesh -> rules -> model -> optimizer -> abstract state is written once.
"""

import dataclasses
from typing import Any

import jax
from jax.experimental import multihost_utils

from mmjax import sharding, tasks
from mmjax.config import parse_mixture
from mmjax.data import sources, vocab
from mmjax.errors import ConfigError
from mmjax.optim import make_optimizer
from mmjax.train.state import abstract_train_state, create_train_state, init_fn
from mmjax.train.step import make_train_step


@dataclasses.dataclass
class Run:
    config: Any
    task: Any
    tokenizer: Any
    mesh: jax.sharding.Mesh
    rules: tuple
    model: Any
    tx: Any
    lr_schedule: Any
    abstract_state: Any    # ShapeDtypeStructs with shardings
    state_shardings: Any

    def init_state(self):
        """A fresh state, born sharded."""
        init = init_fn(self.task, self.model, self.tx)
        return create_train_state(init, self.config.seed, self.state_shardings, self.rules)

    def train_step(self):
        """The jitted train step of this run (see train/step.py)."""
        return make_train_step(self.task, self.model, self.tx, self.lr_schedule, self.mesh,
                               self.rules, self.state_shardings)


def prepare_data(config, data_dir, workdir=None):
    """Builds the datasets the config names on first use and returns the run's tokenizer
    (`data.vocab.run_tokenizer`: the workdir's vocab.txt, written there on first use).
    Process 0 goes first, then the others, so a shared filesystem is written once and every
    process reads the vocabulary process 0 wrote; then all compare their vocabulary's hash."""
    train = [name for name, _ in parse_mixture(config.data.train)]
    names = set(train) | set(config.data.get("tokenizer_data") or ())
    names |= {spec["dataset"] for spec in config.get("evals", {}).values() if "dataset" in spec}
    tokenizer = None
    for first in (True, False):
        if (jax.process_index() == 0) == first:
            for name in sorted(names):
                sources.get(name, data_dir).prepare(data_dir)
            tokenizer = vocab.run_tokenizer(config, data_dir, workdir,
                                            write=jax.process_index() == 0)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"mmjax_prepare_data_{first}")
    if jax.process_count() > 1:
        print(f"process {jax.process_index()}: {vocab.describe(tokenizer)}", flush=True)
    vocab.check_same_everywhere(tokenizer)
    if tokenizer.vocab_size > config.model.text.vocab_size:
        raise ConfigError(f"tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size} tokens but "
                          f"model.text.vocab_size={config.model.text.vocab_size}; raise the latter")
    return tokenizer


def check_image_size(config, task):
    """A task that reads images needs data.image_size to be a multiple of the patch size."""
    size, patch = config.data.image_size, config.model.image.patch_size
    if "image" in task.batch_spec() and size % patch:
        fit = max(patch, round(size / patch) * patch)
        raise ConfigError(f"data.image_size={size} is not a multiple of model.image.patch_size="
                          f"{patch}; set --config.data.image_size={fit} (or another multiple)")


def setup(config, *, data_dir=None, workdir=None, tokenizer=None, devices=None, mesh=None,
          check_batch=True) -> Run:
    """The Run of `config` on `mesh`, else on a mesh of `config.mesh` over `devices` (default:
    all). The tokenizer comes from `tokenizer`, else it is the run's in `workdir` (its
    vocab.txt, written there on first use from the data in `data_dir`, built on first use);
    None for shape-only uses."""
    mesh = mesh or sharding.make_mesh(config.mesh, devices=devices)
    if check_batch:
        sharding.check_batch_size(config.train.batch_size, mesh)
    rule_table = sharding.rules(config.get("sharding"))
    if tokenizer is None and data_dir is not None:
        tokenizer = prepare_data(config, data_dir, workdir)
    task = tasks.get(config, tokenizer)
    check_image_size(config, task)
    model = task.build_model()
    tx, lr_schedule = make_optimizer(config.optim, config.train.steps, config.model)
    abstract, shardings = abstract_train_state(init_fn(task, model, tx), config.seed, mesh, rule_table)
    return Run(config, task, tokenizer, mesh, rule_table, model, tx, lr_schedule, abstract, shardings)
