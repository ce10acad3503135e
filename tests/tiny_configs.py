"""Tiny configs of each task for fast tests (shapes only; no dataset needed)."""

import types

import numpy as np

from mmjax import tasks
from mmjax.config import defaults

# What the train step needs of a tokenizer for MLM masking: ids 0-4 are special.
TOKENIZER = types.SimpleNamespace(vocab_size=64, pad_id=0, mask_id=4, special_ids=(0, 1, 2, 3, 4),
                                  eot_id=63)   # the end token tiny_batch writes (the max id)


def tiny_config(task="clip", **model):
    c = defaults()
    c.task = task
    c.model.update(embed_dim=16, scan=False, **model)
    c.model.image.update(patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32)
    c.model.text.update(vocab_size=64, context_length=8, width=16, depth=2, num_heads=2, mlp_dim=32)
    if task not in ("clip", "clip+caption"):   # a captioner's text tower stays causal
        c.model.text.update(causal=False, pool="first")
    if task == "mlm":
        c.model.text.update(pre_norm=False, embed_norm=True, final_norm=False, type_vocab_size=2)
    c.model.mlm.update(max_predictions=3)
    c.data.update(image_size=8, image_channels=1, crop="resize", mean=(0.5,) * 3, std=(0.5,) * 3)
    c.train.update(steps=10, batch_size=16)
    c.optim.update(warmup_steps=0, decay="constant", lr=1e-2, clip_norm=0.0, weight_decay=0.0)
    return c


def tiny_batch(config, batch_size=None, seed=0):
    """A random batch with the shapes the task's batch spec asks for."""
    rng = np.random.default_rng(seed)
    b = batch_size or config.train.batch_size
    length = config.model.text.context_length
    text = rng.integers(5, TOKENIZER.vocab_size - 2, (b, length)).astype(np.int32)
    text[:, 0], text[:, -1] = 2, TOKENIZER.vocab_size - 1   # [CLS]-like start; EOT = max id
    spec = tasks.get(config, TOKENIZER).batch_spec()
    batch = {"text": text}
    if "image" in spec:
        batch["image"] = rng.normal(size=(b, *spec["image"].shape)).astype(np.float32)
    return batch
