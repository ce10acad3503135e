"""What every implementation in a benchmark shares: synthetic batches of a config's shapes,
the stand-in tokenizer, the throughput unit and the timing record (mmjax and peers alike),
the FLOP counters (XLA's FLOPs of a compiled step), and the timed AdamW step of the JAX
peers (HF Flax and big_vision, in peers.py and big_vision_peer.py)."""

import os
import statistics
import time
import types

import numpy as np

from mmjax import tasks

BERT_IDS = dict(pad=0, cls=101, sep=102, mask=103)  # bert-base-uncased's special ids


def stand_in_tokenizer(config):
    """What the MLM step needs from a tokenizer, with BERT's special ids; end of text (where
    CLIP pools, where an LM's document ends) is the largest id, as in CLIP's BPE."""
    return types.SimpleNamespace(vocab_size=config.model.text.vocab_size, mask_id=BERT_IDS["mask"],
                                 special_ids=(BERT_IDS["pad"], BERT_IDS["cls"], BERT_IDS["sep"],
                                              BERT_IDS["mask"]),
                                 eot_id=config.model.text.vocab_size - 1)


def task_of(config):
    return tasks.get(config, stand_in_tokenizer(config))


def unit(config):
    """'pairs/s', 'tokens/s', ...: what the task's throughput counts."""
    return f"{task_of(config).unit}/s"


def examples_per_step(config):
    return task_of(config).examples_per_step()


def train_flops(config):
    return task_of(config).train_flops()


def _text(rng, b, t, packed=False):
    """Token rows: BERT-style full-length [CLS] ids [SEP] for a bidirectional tower; packed
    rows (a causal LM's) full of ids; for a causal (CLIP) one [SOT] ids [EOT] of random length,
    zero-padded (EOT is the largest id, so EOT pooling finds it)."""
    if packed:
        return rng.integers(1, t.vocab_size, (b, t.context_length), dtype=np.int32)
    if not t.causal:
        tokens = rng.integers(1000, t.vocab_size, (b, t.context_length), dtype=np.int32)
        tokens[:, 0], tokens[:, -1] = BERT_IDS["cls"], BERT_IDS["sep"]
        return tokens
    text = rng.integers(1, t.vocab_size - 2, (b, t.context_length), dtype=np.int32)
    lengths = rng.integers(4, t.context_length + 1, b)
    text[:, 0] = t.vocab_size - 2
    text[np.arange(b), lengths - 1] = t.vocab_size - 1
    text[np.arange(t.context_length)[None] >= lengths[:, None]] = 0
    return text


def synthetic_batches(config, count=4, seed=0):
    """`count` host batches of random data shaped as the task's batch spec."""
    rng = np.random.default_rng(seed)
    b, spec = config.train.batch_size, task_of(config).batch_spec()
    batches = []
    for _ in range(count):
        batch = {}
        for key, s in spec.items():
            if key == "text":
                batch[key] = _text(rng, b, config.model.text, bool(config.data.pack))
            elif np.issubdtype(s.dtype, np.floating):
                batch[key] = rng.standard_normal((b, *s.shape), dtype=np.float32).astype(s.dtype)
            else:
                batch[key] = rng.integers(0, 2, (b, *s.shape)).astype(s.dtype)
        batches.append(batch)
    return batches


# Each implementation's record counts the FLOPs its own program executes, by one or both of:
FLOP_COUNTERS = {
    "xla": "XLA cost-analysis FLOPs of the implementation's compiled train step (every op: "
           "matmuls, attention, elementwise, reductions, the optimizer update)",
    "matmul": "matmul, convolution and attention FLOPs of one train step, forward and backward "
              "(torch: torch.utils.flop_counter.FlopCounterMode over one eager step; mmjax: "
              "mmjax/flops.py's analytical count, the MFU numerator)",
}


def malloc_name():
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"


def timing_record(config, name, impl, times, compile_s, flops):
    """The keys every implementation reports, from its step times and the FLOPs per step its
    own program executes ({counter: FLOPs}, FLOP_COUNTERS); `flop_rate` is FLOPs / median step time."""
    median = statistics.median(times)
    flops = {k: v for k, v in flops.items() if v is not None}
    return {"config": name, "impl": impl, "unit": unit(config),
            "throughput": examples_per_step(config) / median, "step_time_s": median,
            "step_time_min_s": min(times), "step_time_max_s": max(times), "steps": len(times),
            "compile_s": compile_s, "flops": flops,
            "flop_rate": {k: v / median for k, v in flops.items()},
            "batch_size": config.train.batch_size, "dtype": config.model.dtype}


def flax_peer(config, model, loss_fn, batches):
    """A jitted (params, opt_state) update with donated buffers, compiled ahead of time."""
    import jax
    import optax
    o = config.optim
    tx = optax.adamw(o.lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    params = model.params

    def update(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, tx.init(params)]
    device_batches = [jax.device_put(b) for b in batches]
    start = time.perf_counter()
    compiled = jax.jit(update, donate_argnums=(0, 1)).lower(*state, device_batches[0]).compile()
    compile_s = time.perf_counter() - start

    def step(i):
        state[0], state[1], loss = compiled(*state, device_batches[i % len(device_batches)])
        jax.block_until_ready(loss)

    step.compile_s, step.param_count = compile_s, sum(x.size for x in jax.tree.leaves(params))
    step.flops = {"xla": xla_flops(compiled)}
    return step


def xla_flops(compiled):
    """The FLOPs XLA's cost analysis counts in a compiled step (None where it has none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return (cost or {}).get("flops")
