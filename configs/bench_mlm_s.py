"""MLM-S benchmark: a 4-layer BERT (hidden 256) masked-LM train step at sequence 128, batch 32.

  python -m benchmarks.train_step configs/bench_mlm_s.py           # mmjax alone
  .venv-bench/bin/python -m benchmarks.train_step configs/bench_mlm_s.py --peers

Vocab 30522, 4 heads, MLP 1024, GELU, post-LN, learned positions, 15% masking (20 slots
gathered per sequence), MLM head tied to the embeddings, AdamW(1e-4, wd 0.01), float32,
synthetic tokens. Hardware: 2 CPU cores (AVX2). Expected: see benchmarks/README.md
(tokens/s, >= 2.5x the fastest peer); ~1 minute alone, ~6 with --peers.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "mlm"
    # 4 layers: unrolled runs ~10% faster than scan on CPU (scan stacks every layer's saved
    # activations into [depth, ...] buffers); compile time is about the same at this depth.
    c.model.update(scan=False)
    c.model.text.update(vocab_size=30522, context_length=128, width=256, depth=4, num_heads=4,
                        mlp_dim=1024, causal=False, pool="first", pre_norm=False, embed_norm=True,
                        final_norm=False, type_vocab_size=2, activation="gelu", norm_eps=1e-12)
    c.model.mlm.update(max_predictions=20, mask_rate=0.15)
    c.train.update(batch_size=32)
    c.optim.update(lr=1e-4, weight_decay=0.01, warmup_steps=0, decay="constant", b2=0.999,
                   eps=1e-6, clip_norm=0.0)
    return c
