"""CLIP-S benchmark: 4-layer ViT (64 px, patch 8) + 4-layer causal text tower, batch 64.

  python -m benchmarks.train_step configs/bench_clip_s.py          # mmjax alone
  .venv-bench/bin/python -m benchmarks.train_step configs/bench_clip_s.py --peers

Image 64x64x3, patch 8, width 256, 4 heads, MLP 1024, class token; text vocab 49408,
context 32, width 256, 4 layers, causal, EOT pooling; embed dim 256, learnable logit scale,
symmetric InfoNCE, AdamW(1e-4, wd 0.1), float32, synthetic data. Hardware: 2 CPU cores
(AVX2). Expected: see benchmarks/README.md (pairs/s, >= 1.2x the fastest peer).
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "clip"
    # 4 layers: unrolled runs ~10% faster than scan on CPU (scan stacks every layer's saved
    # activations into [depth, ...] buffers); compile time is about the same at this depth.
    c.model.update(scan=False)
    c.model.update(embed_dim=256)
    c.model.image.update(patch_size=8, width=256, depth=4, num_heads=4, mlp_dim=1024, pool="cls")
    c.model.text.update(vocab_size=49408, context_length=32, width=256, depth=4, num_heads=4,
                        mlp_dim=1024, causal=True, pool="eot")
    c.data.update(image_size=64, image_channels=3)
    c.train.update(batch_size=64)
    c.optim.update(lr=1e-4, weight_decay=0.1, warmup_steps=0, decay="constant", clip_norm=0.0)
    return c
