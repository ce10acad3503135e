"""The one train loop: build or restore the sharded state, step, log, evaluate, checkpoint."""

import os
import time

import jax
from jax.experimental import multihost_utils

from mmjax import sharding
from mmjax.checkpoint import Checkpointer, PreemptionNotice
from mmjax.config import ConfigError
from mmjax.data import builders, pipeline
from mmjax.data.tokenizers import get_tokenizer
from mmjax.eval.evaluator import make_evaluator
from mmjax.metrics import MetricWriter, Throughput
from mmjax.nn.build import build_model
from mmjax.optim import make_optimizer
from mmjax.train.state import abstract_train_state, create_train_state
from mmjax.train.step import make_train_step


def prepare_data(config, data_dir):
    """Builds the datasets and tokenizer on first use (process 0 first, then the others, so a
    shared filesystem is written once) and returns the tokenizer."""
    for first in (True, False):
        if (jax.process_index() == 0) == first:
            for name in config.data.datasets:
                builders.prepare(name, data_dir)
            tokenizer = get_tokenizer(config.data.tokenizer, data_dir)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"mmjax_prepare_data_{first}")
    if tokenizer.vocab_size > config.model.text.vocab_size:
        raise ConfigError(f"tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size} tokens but "
                         f"model.text.vocab_size={config.model.text.vocab_size}; raise the latter")
    return tokenizer


def train_batches(config, data_dir, tokenizer):
    """This process's slice of each global training batch, as numpy, with get/set_state."""
    kw = dict(data_dir=data_dir, split="train", tokenizer=tokenizer, seed=config.seed,
              batch_size=config.train.batch_size // jax.process_count(),
              process_index=jax.process_index(), process_count=jax.process_count())
    if config.task == "mlm":
        return pipeline.text_batches(max_length=config.model.text.context_length, **kw)
    return pipeline.clip_batches(context_length=config.model.text.context_length, **kw)


def describe_memory(state, compiled):
    """Lines naming the per-device bytes of the state and the compiled step's memory needs."""
    per_device = sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(state))
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    lines = [f"state: {total / 2**20:.1f} MiB in all, {per_device / 2**20:.1f} MiB on each device "
             f"({per_device / total:.3f} of it)"]
    analysis = compiled.memory_analysis()
    if analysis is not None:
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes")
        lines.append("compiled step per device: " + ", ".join(
            f"{f.removesuffix('_size_in_bytes')} {getattr(analysis, f) / 2**20:.1f} MiB"
            for f in fields if hasattr(analysis, f)))
    return lines


def train(config, workdir, data_dir, weights_only=False):
    """Trains `config` in `workdir` (resuming from its newest usable checkpoint); returns the
    last evaluation's metrics. On SIGTERM it saves, and returns once the save is committed.
    `weights_only`: a checkpoint of another model config gives just its parameters."""
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.train.batch_size, mesh)
    rule_table = sharding.rules(config.get("sharding"))
    tokenizer = prepare_data(config, data_dir)
    model = build_model(config)
    tx, lr_schedule = make_optimizer(config.optim, config.train.steps)
    abstract_state, state_shardings = abstract_train_state(config, model, tx, mesh, rule_table)
    batches = train_batches(config, data_dir, tokenizer)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config, keep=config.checkpoint.keep,
                        keep_period=config.checkpoint.keep_period)
    restored = ckpt.restore(abstract_state, weights_only=weights_only)
    if restored and not restored.params_only:
        start, state, origin = restored.step, restored.state, f"resuming at step {restored.step}"
        batches.set_state(restored.data_state)
    else:
        start, origin = 0, "from scratch"
        state, _ = create_train_state(config, model, tx, mesh, rule_table)
    if restored and restored.params_only:  # --load_weights_only, from another config's run
        state = state.replace(params=restored.state["params"])
        origin = "from the parameters of another config's checkpoint (now in checkpoints/earlier-*)"
        metrics_file = os.path.join(workdir, "metrics.jsonl")
        if jax.process_index() == 0 and os.path.exists(metrics_file):  # that run's, kept
            os.replace(metrics_file, f"{metrics_file}.earlier-{time.strftime('%Y%m%d-%H%M%S')}")
    if restored and restored.changes:
        origin += "; changed since the checkpoint: " + "; ".join(restored.changes)
    if jax.process_index() == 0:  # only now: a refused restore leaves the run's config as it was
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    writer = MetricWriter(workdir, config.train.steps, start, enabled=jax.process_index() == 0)
    writer.print(f"mesh {dict(mesh.shape)} on {jax.device_count()} devices, "
                 f"{jax.process_count()} process(es); {origin}")
    train_step = make_train_step(config, model, tx, lr_schedule, mesh, rule_table, tokenizer,
                                 state_shardings)
    evaluate = make_evaluator(config, model, tokenizer, data_dir, mesh)
    throughput = Throughput(config.train.batch_size)
    results = {}
    batch = sharding.global_batch(next(batches), mesh) if start < config.train.steps else None
    if batch is not None:
        for line in describe_memory(state, train_step.compile(state, batch)):
            writer.print(line)
    throughput(start)
    preemption = PreemptionNotice()  # SIGTERM: save at a step every process agrees on, stop
    for step in range(start + 1, config.train.steps + 1):
        state, metrics = train_step(state, batch)
        last = step == config.train.steps
        preempted = preemption(step)
        save = step % config.train.checkpoint_every == 0 or last or preempted
        data_state = batches.get_state() if save else None  # before the next batch is read
        if not (last or preempted):
            batch = sharding.global_batch(next(batches), mesh)  # overlaps with the step
        if step % config.train.log_every == 0 or last:
            metrics = jax.device_get(metrics)
            rate = throughput(step)
            writer.write(step, {f"train/{k}": v for k, v in metrics.items()} |
                         {"train/examples_per_s": rate})
            writer.progress(step, float(metrics["loss"]), rate)
        if (step % config.train.eval_every == 0 or last) and not preempted:
            results = writer.write(step, evaluate(state.params))
            writer.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()
                                                      if k != "step"))
        if save:
            ckpt.save(step, state, data_state)
        if preempted:
            ckpt.wait()
            writer.print(f"preempted: saved step {step}; run the same command to resume")
            break
    if start >= config.train.steps:
        results = writer.write(start, evaluate(state.params))
        writer.print(f"already trained to step {start}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in results.items() if k != "step"))
    ckpt.wait()
    ckpt.close()
    writer.close()
    preemption.close()
    return results


def evaluate_checkpoint(config, workdir, data_dir):
    """Evaluates the newest checkpoint in `workdir` (on this run's mesh) and returns metrics."""
    mesh = sharding.make_mesh(config.mesh)
    tokenizer = prepare_data(config, data_dir)
    model = build_model(config)
    tx, _ = make_optimizer(config.optim, config.train.steps)
    abstract_state, _ = abstract_train_state(config, model, tx, mesh, sharding.rules(config.get("sharding")))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config, read_only=True)
    restored = ckpt.restore(abstract_state, params_only=True)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first with "
                                f"`mmjax train --workdir {workdir}`")
    params = restored.state["params"]
    results = {"step": restored.step, **make_evaluator(config, model, tokenizer, data_dir, mesh)(params)}
    return results
