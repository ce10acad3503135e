"""MLM vs RTD (ELECTRA) vs MLM+NSP at one model size and one training-FLOPs budget on the
built-in prose, each then fine-tuned on `play_genres` with one budget (the README's table).

  for o in mlm rtd nsp; do
    mmjax train --config configs/compare_objectives.py:pretrain=$o --workdir runs/cmp_$o
    mmjax train --config configs/compare_objectives.py:genres=runs/cmp_$o --workdir runs/cmp_${o}_genres
  done
  mmjax train --config configs/compare_objectives.py:genres=scratch --workdir runs/cmp_scratch_genres

Arguments (comma-separated): `pretrain=mlm|rtd|nsp` or `genres=<a pretrain workdir>` (or
`genres=scratch`: the control, the same tower and vocabulary with no pretraining);
`scale=<float>` multiplies the budget of the run it is given to (the pretrain FLOPs, or the
fine-tune steps; 1 by default) for a reduced but still equal comparison.

Model (all three): smoke_mlm's BERT tower (width 128, 2 layers, 4 heads, MLP 512, 64 tokens,
rotary positions, WordPiece 8,192 trained on the prose's training split), the encoder kept
for fine-tuning being `text/...` in each task (RTD: the discriminator). Budget: the FLOPs of
smoke_mlm's 2,000 steps of 32 rows (each task's `train_flops()`, mmjax/flops.py); RTD's and
MLM+NSP's steps are that budget over their own per-step FLOPs (RTD also runs its generator:
fewer steps). Same optimiser for all. Fine-tune: task 'classify' on play_genres, the pretrain
run's vocab.txt and `text/*` params, mean-pooled, 300 steps of 32 at lr 1e-3 (head 10x),
accuracy on its held-out split. Hardware: 2 CPU cores; minutes per run when unloaded.

Measured 2026-12-04, full budget, idle 2-core AMD EPYC (~4 min per pretrain, ~1 min per
fine-tune): play_genres accuracy after 300 / 60 (`scale=0.2`) fine-tune steps: MLM 0.843 /
0.488, RTD 0.783 / 0.310, MLM+NSP 0.840 / 0.396, from scratch 0.847 / 0.356 (README's table:
300 steps teach the genre without pretraining; 60 steps show what pretraining gave).
"""

from mmjax import tasks
from mmjax.config import defaults
from mmjax.configs import smoke_mlm

REFERENCE_STEPS = 2000   # smoke_mlm's: the budget is MLM's FLOPs over these steps
FINETUNE_STEPS = 300


def _args(arg: str) -> dict:
    out = dict(item.split("=", 1) for item in arg.split(",") if item)
    unknown = set(out) - {"pretrain", "genres", "scale"}
    if unknown or ("pretrain" in out) == ("genres" in out):
        raise ValueError(f"compare_objectives.py:{arg}: give pretrain=mlm|rtd|nsp or "
                         f"genres=<workdir>|scratch, optionally scale=<float>")
    return out


def _tower(c):
    """smoke_mlm's tower, data and masking, with smoke_rtd's rotary positions."""
    mlm = smoke_mlm.get_config()
    c.data.update(train=mlm.data.train, tokenizer=mlm.data.tokenizer)
    c.model.scan = mlm.model.scan
    c.model.text.update({**mlm.model.text.to_dict(), "position": "rotary"})
    c.model.mlm.update(max_predictions=mlm.model.mlm.max_predictions)
    return c


def _pretrain(objective: str, scale: float):
    c = _tower(defaults())
    c.task = {"mlm": "mlm", "rtd": "rtd", "nsp": "mlm+nsp"}[objective]
    c.model.rtd.update(disc_weight=50.0)
    c.train.update(batch_size=32, log_every=100)
    c.optim.update(lr=1.5e-3, warmup_steps=50, weight_decay=0.01, b2=0.999)
    reference = _tower(defaults())
    reference.task = "mlm"
    reference.train.batch_size = 32
    budget = scale * REFERENCE_STEPS * tasks.get(reference, None).train_flops()
    steps = max(1, round(budget / tasks.get(c, None).train_flops()))
    c.train.update(steps=steps, eval_every=steps, checkpoint_every=steps)
    c.evals.mlm = dict(type="mlm", dataset="prose", split="test")
    if objective == "rtd":
        c.evals.rtd = dict(type="rtd", dataset="prose", split="test")
    if objective == "nsp":
        c.evals.nsp = dict(type="nsp", dataset="prose", split="test")
    return c


def _genres(source: str, scale: float):
    c = _tower(defaults())
    c.task = "classify"
    if source == "scratch":   # the control: the same tower and vocabulary, no pretraining
        c.data.update(train="play_genres", tokenizer_data=(c.data.train,))
    else:
        c.data.update(train="play_genres", vocab_file=f"{source}/vocab.txt")
        c.init.update(source=source, load=("text/*",))
    c.model.text.pool = "mean"
    c.model.classify.update(tower="text", num_classes=6, text_length=64)
    steps = max(1, round(scale * FINETUNE_STEPS))
    c.train.update(steps=steps, batch_size=32, log_every=25, eval_every=steps,
                   checkpoint_every=steps)
    c.optim.update(lr=1e-3, warmup_steps=max(1, min(30, steps // 5)), weight_decay=0.01, head=("classifier/*",),
                   head_lr_mult=10.0)
    return c


def get_config(arg=""):
    a = _args(arg)
    scale = float(a.get("scale", 1.0))
    return _pretrain(a["pretrain"], scale) if "pretrain" in a else _genres(a["genres"], scale)
