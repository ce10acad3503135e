"""Smoke MLM + NSP: a small BERT learns masked tokens and next-sentence prediction on real
English prose on a CPU (BERT's original pre-training, task 'mlm+nsp').

  mmjax train --config configs/smoke_nsp.py

Data: the built-in prose (Python's pydoc topics and Shakespeare's plays in ~48-word chunks,
every 20th held out) as sentence pairs: each chunk is cut at a sentence end into A and B; half
the time B is swapped for as many words of another chunk (mmjax/data/sentence_pairs.py).
Tokenizer: WordPiece (8,192) trained on the training split. Hardware: 2 CPU cores.

Measured 2026-12-04 (2,000 steps; 42 min on a 2-core box shared with ~7 other runs): held-out
NSP accuracy 0.644 on the 1,010 test pairs (majority answer 0.512; 0.512 at steps 500 and 1000,
0.615 at 1500), masked-token accuracy 0.140 (most frequent token 0.066). The issue's bar, NSP
>= 0.75, is NOT reached: with context_length=64, max_predictions=10 and 4,000 steps NSP is
0.647. The pairs are hard on this data: ~93% of it is Shakespeare, so a random B is mostly
another play's ~24 words, and a bag-of-words logistic regression on (A, B, A*B) reaches 0.59
held out. Why (code read 2026-12-04, no bug found): a pair is
one 48-word chunk cut at a sentence end (A ~24 words ending there, B starting at one), the
random B as many words of another chunk from one of its sentence starts, so neither length
nor truncation tells them apart (rows ~66 tokens of 128: nothing is cut); a random B comes
from A's own play or topic only 2.4% of the time (the data's ceiling ~0.99). The clue left
is topical (speaker names such as LEONATO / HERO, a play's vocabulary), which the model only
starts to use after ~1,000 steps at the majority answer. Reaching the bar needs longer
training (NSP still climbs at the end) or longer pairs. Rotary positions
(--config.model.text.position=rotary, 2,000 steps, 2026-12-04) learn MLM faster (0.261) and
leave the majority answer sooner (NSP 0.534 / 0.560 / 0.592 at 500 / 1,000 / 1,500) but end
lower: NSP 0.613.

Independent reference (2026-12-04, benchmarks/torch_pretraining_reference.py):
transformers' BertForPreTraining of this size trained on this config's own first 2,000
batches of pair rows with its recipe (lr schedule, AdamW, clip, MLM + NSP, numpy 80/10/10
masking), scored on the very test pairs the `nsp` evaluator reads: NSP 0.512 / 0.523 / 0.579
/ 0.626 at 500 / 1,000 / 1,500 / 2,000 steps, where mmjax gives 0.512 / 0.512 / 0.615 / 0.644.
mmjax learns NSP as fast as transformers (no bug). Longer: the same reference on the first
4,000 batches (4,000-step schedule) gives 0.512 / 0.596 / 0.634 / 0.663 at 1,000 / 2,000 /
3,000 / 4,000 steps (~35 min at ~0.5 s/step, shared), so doubling the steps buys ~0.04:
the bar needs far more training than a CPU smoke, or pairs carrying more text than one
~48-word chunk (e.g. A and B from consecutive chunks of one play), not yet tried.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "mlm+nsp"
    c.data.update(train="prose", tokenizer="wordpiece")
    c.model.scan = False  # 2 layers: unrolled runs faster on CPU
    c.model.text.update(vocab_size=8192, context_length=128, width=128, depth=2, num_heads=4,
                        mlp_dim=512, causal=False, pool="first", pre_norm=False, embed_norm=True,
                        final_norm=False, type_vocab_size=2, norm_eps=1e-12)
    c.model.mlm.update(max_predictions=20)
    c.train.update(steps=2000, batch_size=32, log_every=100, eval_every=1000, checkpoint_every=1000)
    c.optim.update(lr=1.5e-3, warmup_steps=50, weight_decay=0.01, b2=0.999)
    c.evals.mlm = dict(type="mlm", dataset="prose", split="test")
    c.evals.nsp = dict(type="nsp", dataset="prose", split="test")
    return c
