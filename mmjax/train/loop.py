"""The one train loop: build or restore the sharded state, step, log, evaluate, checkpoint."""

import math
import time

import jax

from mmjax import eval as evaluators
from mmjax import paths
from mmjax.checkpoint import Checkpointer, PreemptionNotice
from mmjax.data import pipeline
from mmjax.errors import CheckpointError, TrainingDiverged
from mmjax.metrics import MetricWriter, Throughput
from mmjax.train import init_from
from mmjax.train.early_stop import EarlyStopping
from mmjax.train.feed import Feed
from mmjax.train.mfu import MFU
from mmjax.train.profile import Profiler
from mmjax.train.setup import setup


def describe_memory(state, compiled):
    """Lines naming the per-device bytes of the state and the compiled step's memory needs."""
    def shard_bytes(leaf):  # from the sharding, so it works for devices not attached here
        return math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    per_device = sum(shard_bytes(leaf) for leaf in jax.tree.leaves(state))
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


def due(evals, step, last) -> dict:
    """The evaluators due at `step` (all of them if `last`)."""
    return {name: e for name, e in evals.items() if last or (e.every > 0 and step % e.every == 0)}


def evaluate(evals, params):
    """{'eval/<name>/<metric>': value} of `evals` ({name: evaluator})."""
    results = {}
    for name, evaluator in evals.items():
        results.update({f"eval/{name}/{k}": v for k, v in evaluator.run(params).items()})
    return results


def _summary(results):
    return ", ".join(f"{k} {v}" if isinstance(v, (int, str)) else f"{k} {v:.4f}"
                     for k, v in results.items() if k != "step")


def train(config, workdir, data_dir, weights_only=False):
    """Trains `config` in `workdir` (resuming from its newest usable checkpoint); returns the
    last evaluation's metrics. On SIGTERM it saves, and returns once the save is committed.
    `weights_only`: a checkpoint of another model config gives just its parameters."""
    run = setup(config, data_dir=data_dir, workdir=workdir)
    batches = pipeline.train_batches(run, data_dir, jax.process_index(), jax.process_count())
    ckpt = Checkpointer(paths.join(workdir, "checkpoints"), config, keep=config.checkpoint.keep,
                        keep_period=config.checkpoint.keep_period)
    restored = ckpt.restore(run.abstract_state, weights_only=weights_only)
    if restored and not restored.params_only:
        start, state, origin = restored.step, restored.state, f"resuming at step {restored.step}"
        try:
            batches.set_state(restored.data_state)
        except ValueError as e:
            raise CheckpointError(f"{workdir}/checkpoints/{restored.step}: {e}") from None
    else:
        start, origin = 0, "from scratch"
        state = run.init_state()
        if config.init.source and not restored:
            state, loaded = init_from.load_into(run, state)
            origin = f"initialised with {loaded}"
    if restored and restored.params_only:  # --load_weights_only, from another config's run
        state = state.replace(params=restored.state["params"])
        origin = "from the parameters of another config's checkpoint (now in checkpoints/earlier-*)"
        metrics_file = paths.resolve(workdir) / "metrics.jsonl"
        if jax.process_index() == 0 and metrics_file.exists():  # that run's, kept
            metrics_file.rename(f"{metrics_file}.earlier-{time.strftime('%Y%m%d-%H%M%S')}")
    if restored and restored.changes:
        origin += "; changed since the checkpoint: " + "; ".join(restored.changes)
    if jax.process_index() == 0:  # only now: a refused restore leaves the run's config as it was
        paths.write_text(paths.join(workdir, "config.json"), config.to_json(indent=2))
    writer = MetricWriter(workdir, config.train.steps, start, enabled=jax.process_index() == 0)
    writer.print(f"task {config.task}, mesh {dict(run.mesh.shape)} on {jax.device_count()} devices, "
                 f"{jax.process_count()} process(es); {origin}")
    train_step = run.train_step()
    evals = evaluators.build(run, data_dir)
    throughput = Throughput(config.train.batch_size)
    mfu = MFU(run.task.train_flops(), config.model.get("dtype", "float32"),
              config.train.get("peak_flops_per_chip", 0.0))
    if mfu.peak:
        writer.print(f"train/mfu: {mfu.flops_per_step / 1e9:.1f} GFLOPs per step (analytical, "
                     f"mmjax/flops.py) against {mfu.peak / 1e12:.3f} TFLOP/s per chip x {mfu.chips} "
                     f"({mfu.source})")
    elif mfu.source:
        writer.print(f"train/mfu: {mfu.source}")
    stopping = EarlyStopping(config, workdir, start)
    end = start if stopping.record["stopped"] else config.train.steps  # stopped early before
    max_skipped = config.optim.get("max_skipped_steps", 10)
    results = {}
    feed = Feed(batches, run.mesh, config.data.get("max_bad_fraction", 0.01)) if start < end else None
    batch, batch_state = feed.next() if feed else (None, None)
    if batch is not None:
        for line in describe_memory(state, train_step.compile(state, batch)):
            writer.print(line)
    throughput(start)
    preemption = PreemptionNotice()  # SIGTERM: save at a step every process agrees on, stop
    profiler = Profiler(config.train.get("profile"), workdir)
    try:
        for step in range(start + 1, end + 1):
            profiler.before(step, state)
            state, metrics = train_step(state, batch)
            last = step == config.train.steps
            preempted = preemption(step)
            save = step % config.train.checkpoint_every == 0 or last or preempted
            consumed = batch_state  # the data position after this step's batch
            data_state = consumed if save else None
            if not (last or preempted):
                batch, batch_state = feed.next(metrics)  # made ahead by the feed's thread
            if step % config.train.log_every == 0 or last:
                metrics = jax.device_get(metrics)
                rate = throughput(step)
                writer.write(step, {f"train/{k}": v for k, v in metrics.items()} |
                             {"train/examples_per_s": rate} | mfu(rate / config.train.batch_size) |
                             feed.stats())
                writer.progress(step, float(metrics["loss"]), rate)
                if int(metrics.get("skipped_steps", 0)) > max_skipped:  # (saves commit below)
                    raise TrainingDiverged(
                        f"step {step}: the last {int(metrics['skipped_steps'])} updates had non-finite "
                        f"gradients (loss {float(metrics['loss'])}) and were skipped; stopping. The "
                        f"checkpoints in {workdir}/checkpoints hold finite parameters: lower optim.lr "
                        f"or raise optim.warmup_steps, then resume")
            if save:  # before evaluating: a failing evaluator loses no checkpoint
                with throughput.paused(state):  # the save's device-to-host copy is not training
                    ckpt.save(step, state, data_state)
                writer.flush()  # a bucket's metrics.jsonl is rewritten at saves: it holds every saved step
            evaluated = {}
            now_due = {} if preempted else due(evals, step, last)
            if now_due:
                with throughput.paused(state):  # steps still on the device are waited for first
                    evaluated = evaluate(now_due, state.params)
            stop = False
            if evaluated:
                results = writer.write(step, evaluated)
                writer.print(f"step {step}: " + _summary(results))
                stop = stopping.update(step, results, state.params) and not last
                if stop and not save:  # the stopping step is kept, with its data position
                    with throughput.paused(state):
                        ckpt.save(step, state, consumed)
                if save or stop:
                    writer.flush()
            if preempted:
                ckpt.wait()
                writer.print(f"preempted: saved step {step}; run the same command to resume")
                break
            if stop:
                writer.print(f"early stop at step {step}: {stopping.summary()}")
                break
    except BaseException:  # an evaluator's or the data's error: commit the save under way first
        ckpt.wait()
        raise
    profiler.close(state)
    if start >= end:
        results = writer.write(start, evaluate(evals, state.params))
        writer.print(f"already trained to step {start}: " + _summary(results))
    if stopping.enabled:
        writer.print(stopping.summary())
        results = results | {"best_step": stopping.record["step"]}
    if feed:
        feed.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
    preemption.close()
    return results


def evaluate_checkpoint(config, workdir, data_dir):
    """Evaluates the newest checkpoint in `workdir` (on this run's mesh) and returns metrics."""
    run = setup(config, data_dir=data_dir, workdir=workdir, check_batch=False)
    ckpt = Checkpointer(paths.join(workdir, "checkpoints"), config, read_only=True)
    restored = ckpt.restore(run.abstract_state, params_only=True)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first with "
                                f"`mmjax train --workdir {workdir}`")
    params = restored.state["params"]
    return {"step": restored.step, **evaluate(evaluators.build(run, data_dir), params)}
