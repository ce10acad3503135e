"""Smoke RTD (ELECTRA): a small generator and discriminator learn replaced-token detection on
real English prose on a CPU.

  mmjax train --config configs/smoke_rtd.py

Data: smoke_mlm's (pydoc_data + Shakespeare in ~48-word chunks, every 20th held out;
WordPiece 8,192). Model: smoke_mlm's BERT tower as the discriminator (width 128, 2 layers),
with rotary positions; the generator a quarter of its width (32, one head, MLP 128, 2 layers),
the embeddings shared. Masking: BERT's 80/10/10 at 15% (`model.mlm`); loss = generator MLM +
50 x discriminator BCE. Hardware: 2 CPU cores. Bar (tests/test_rtd.py, acceptance): held-out
discriminator accuracy above the always-"original" baseline and ROC-AUC >= 0.8.

Measured 2026-12-04 on a heavily shared 2-core machine (~1.2-2 s/step): with learned
positions 1,000 steps left the discriminator at the prior (accuracy = baseline 0.864, ROC-AUC
0.55); rotary positions (which also learn the smoke MLM fastest, README) at 1,000 steps:
accuracy 0.872 vs 0.866, ROC-AUC 0.728; resumed to 2,000 steps (the cosine restarted at
step 1,000, so not quite this file's schedule): accuracy 0.874 vs 0.869, ROC-AUC 0.742, the
generator's masked-token accuracy 0.184. The issue's bar of ROC-AUC >= 0.8 is NOT met;
a weaker generator and more replacements (generator_width=16, mask_rate=0.25, 1,000 steps)
did worse: 0.778 vs 0.764, ROC-AUC 0.693. Why it stops there (code read 2026-12-04, no bug
found): the evaluator
corrupts each held-out row with the run's own masker and generator, as training does, and
scores every non-padding token (label: input != original); the discriminator is calibrated to
the ~13% replaced prior (replaced_accuracy 0.11 at logit > 0) and ranks slowly better (AUC
0.728 at 1,000 steps, 0.742 at 2,000): with a generator at 0.18 masked-token accuracy most
replacements are implausible, but telling them needs word order and syntax, learnt here from
one bit per token with ~13% positives (~4M tokens in all). The bar
needs a far longer run than a CPU smoke (below: 8,000 steps end where 2,000 did).

Independent reference (2026-12-04, benchmarks/torch_pretraining_reference.py: transformers'
models of these sizes trained on this config's own first 2,000 batches with its recipe: same
lr schedule, AdamW, clip, 50 x BCE over non-padding tokens, numpy 80/10/10 masking):
ElectraForPreTraining + ElectraForMaskedLM (learned positions, shared embeddings, 2,000-step
schedule) held-out ROC-AUC 0.537 at 500 steps, 0.530 at 1,000 (at the prior, as mmjax with
learned positions); with ELECTRA-small's lr 5e-4 (100 warm-up steps) 0.526 at 500. RoFormer
bodies (rotary) under ELECTRA's heads, 1,000-step schedule: 0.701 at 500 and 0.720 at 1,000
(accuracy 0.871 vs baseline 0.867), where mmjax reaches 0.728 (0.872 vs 0.866); lr 3e-3:
0.515 at 500 (stuck at the prior). So mmjax learns RTD as fast as transformers (no bug) and
lr 1.5e-3 is the best of the three. Longer (RoFormer reference, 4,000-step schedule, the
2,000 batches twice, ~47 min shared): ROC-AUC 0.633 / 0.670 / 0.700 / 0.707 at 1,000 / 2,000 /
3,000 / 4,000 steps, accuracy 0.880 vs 0.877, while its generator climbs from 0.18 to 0.24
masked-token accuracy: the AUC is scored against the run's own, ever better generator, and
more steps buy little; 0.8 needs far more than a CPU smoke. Measured again 2026-12-04 on an
idle 2-core AMD EPYC (~5 steps/s), this file with --config.train.steps=8000 (one 8,000-step
cosine, ~27 min): ROC-AUC 0.664 / 0.706 / 0.736 / 0.740 at 2,000 / 4,000 / 6,000 / 8,000
steps (accuracy 0.882 vs 0.880 at the end; replaced tokens caught 0.12), while the generator
climbs 0.220 -> 0.259: four times the steps end where 2,000 did. `mmjax export --format
hf_electra` holds learned positions only: train with
--config.model.text.position=learned to export this run to transformers.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "rtd"
    c.data.update(train="prose", tokenizer="wordpiece")
    c.model.scan = False  # 2 layers: unrolled runs faster on CPU
    c.model.text.update(vocab_size=8192, context_length=64, width=128, depth=2, num_heads=4,
                        mlp_dim=512, causal=False, pool="first", pre_norm=False, embed_norm=True,
                        final_norm=False, type_vocab_size=2, norm_eps=1e-12, position="rotary")
    c.model.mlm.update(max_predictions=10)
    c.model.rtd.update(disc_weight=50.0)
    c.train.update(steps=2000, batch_size=32, log_every=100, eval_every=1000, checkpoint_every=1000)
    c.optim.update(lr=1.5e-3, warmup_steps=50, weight_decay=0.01, b2=0.999)
    c.evals.rtd = dict(type="rtd", dataset="prose", split="test")
    c.evals.mlm = dict(type="mlm", dataset="prose", split="test")   # the generator's
    return c
