"""BERT-base MLM train step at sequence 128 (12 layers, hidden 768, 12 heads), for accelerators.

  python -m benchmarks.train_step configs/bench_bert_base.py                 # bfloat16
  python -m benchmarks.train_step configs/bench_bert_base.py --config.model.dtype=float32

Batch 256, 20 predicted slots per sequence, bfloat16 compute, AdamW(1e-4, wd 0.01),
synthetic tokens. Hardware: one GPU or TPU chip (fits 16 GB); on a 2-core CPU a step takes
minutes, use --config.train.batch_size=8. Expected: see benchmarks/README.md.
"""

from mmjax.configs import bench_mlm_s


def get_config():
    c = bench_mlm_s.get_config()
    # Unrolled: on an H200 the step is faster than scanned (63 vs 81 ms; the scan stacks every
    # layer's saved activations and copies its carries) for a compile under a minute.
    c.model.update(dtype="bfloat16", scan=False)
    c.model.text.update(width=768, depth=12, num_heads=12, mlp_dim=3072)
    c.train.update(batch_size=256)
    return c
