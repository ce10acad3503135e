"""Fine-tune a smoke CLIP's image tower as a digit classifier, with layer-wise learning rates.

  mmjax train --config configs/smoke_clip.py --workdir runs/smoke_clip    # first, ~2 min
  mmjax train --config configs/finetune_digits.py

The image tower loads from runs/smoke_clip; a zero-initialised linear head over its pooled
features learns the 10 labels. Each block's rate is scaled by 0.75 ** (depth - layer), the
embeddings' by 0.75 ** depth, the new head's by 3. Early stopping keeps the best step's
params in WORKDIR/best. Hardware: 2 CPU cores, ~1 min. Expected: eval/classify/accuracy
> 0.95 on the 1,000 held-out digits.
"""

from mmjax.configs import smoke_clip


def get_config(source="runs/smoke_clip"):
    c = smoke_clip.get_config()
    c.task = "classify"
    c.model.classify.update(tower="image", num_classes=10)
    c.init.update(source=source, load=("image/*",))
    c.optim.update(lr=1e-3, warmup_steps=20, layer_decay=0.75, head=("classifier/*",),
                   head_lr_mult=3.0)
    c.train.update(steps=200, eval_every=25, checkpoint_every=100,
                   early_stop=dict(metric="eval/classify/accuracy", mode="max", patience=4))
    c.evals = {}   # the task's default: accuracy on the digits' test split
    return c
