"""What every implementation in a benchmark shares: synthetic batches of a config's shapes,
the stand-in tokenizer, the throughput unit and the timing record (mmjax and peers alike)."""

import os
import statistics
import types

import numpy as np

from mmjax import tasks

BERT_IDS = dict(pad=0, cls=101, sep=102, mask=103)  # bert-base-uncased's special ids


def stand_in_tokenizer(config):
    """What the MLM step needs from a tokenizer, with BERT's special ids."""
    return types.SimpleNamespace(vocab_size=config.model.text.vocab_size, mask_id=BERT_IDS["mask"],
                                 special_ids=(BERT_IDS["pad"], BERT_IDS["cls"], BERT_IDS["sep"],
                                              BERT_IDS["mask"]))


def task_of(config):
    return tasks.get(config, stand_in_tokenizer(config))


def unit(config):
    """'pairs/s', 'tokens/s', ...: what the task's throughput counts."""
    return f"{task_of(config).unit}/s"


def examples_per_step(config):
    return task_of(config).examples_per_step()


def train_flops(config):
    return task_of(config).train_flops()


def _text(rng, b, t):
    """Token rows: BERT-style full-length [CLS] ids [SEP] for a bidirectional tower; for a
    causal (CLIP) one [SOT] ids [EOT] of random length, zero-padded (EOT is the largest id,
    so EOT pooling finds it)."""
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
                batch[key] = _text(rng, b, config.model.text)
            elif np.issubdtype(s.dtype, np.floating):
                batch[key] = rng.standard_normal((b, *s.shape), dtype=np.float32).astype(s.dtype)
            else:
                batch[key] = rng.integers(0, 2, (b, *s.shape)).astype(s.dtype)
        batches.append(batch)
    return batches


def malloc_name():
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"


def timing_record(config, name, impl, times, compile_s):
    """The keys every implementation reports, from its step times."""
    median = statistics.median(times)
    return {"config": name, "impl": impl, "unit": unit(config),
            "throughput": examples_per_step(config) / median, "step_time_s": median,
            "step_time_min_s": min(times), "step_time_max_s": max(times), "steps": len(times),
            "compile_s": compile_s, "flops_per_step": train_flops(config),
            "batch_size": config.train.batch_size, "dtype": config.model.dtype}
