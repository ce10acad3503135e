"""LiT on the digits: the image tower of a trained smoke CLIP, locked; only the text tower learns.

  mmjax train --config configs/smoke_clip.py --workdir runs/smoke_clip    # first, ~2 min
  mmjax train --config configs/lit_digits.py

The image tower and its projection load from runs/smoke_clip (`init.source`) and stay
frozen (`optim.frozen`: no updates, no optimizer state); the text tower starts fresh.
Hardware: 2 CPU cores. Expected: eval/zeroshot/top1 at the from-scratch run's level (~0.91)
in far fewer steps (see the curve in metrics.jsonl, evaluated every 25 steps).
"""

from mmjax.configs import smoke_clip

LOCKED = ("image/*", "image_proj/*")


def get_config(source="runs/smoke_clip"):
    c = smoke_clip.get_config()
    c.init.update(source=source, load=LOCKED)
    c.optim.frozen = LOCKED
    c.train.update(steps=200, eval_every=25, checkpoint_every=100)
    return c
