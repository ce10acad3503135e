"""CLIP ViT-B/16 train step at 224 px (text: 12 layers, width 512, context 77), for accelerators.

  python -m benchmarks.train_step configs/bench_clip_b16.py                  # bfloat16
  python -m benchmarks.train_step configs/bench_clip_b16.py --config.model.remat=dots

Image tower ViT-B/16 (width 768, 12 layers, 12 heads), text tower as OpenAI CLIP (vocab
49408, width 512, 8 heads), embed dim 512, InfoNCE, batch 256, bfloat16 compute,
AdamW(1e-4, wd 0.1), synthetic data. Hardware: one GPU or TPU chip (about 40 GB without
remat); on a 2-core CPU use --config.train.batch_size=4. Expected: see benchmarks/README.md.
"""

from mmjax.configs import bench_clip_s


def get_config():
    c = bench_clip_s.get_config()
    # Unrolled: on an H200 the step is faster than scanned (143 vs 170 ms; the scan stacks every
    # layer's saved activations and copies its carries) for a compile under a minute.
    c.model.update(dtype="bfloat16", scan=False)
    c.model.update(embed_dim=512)
    c.model.image.update(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072)
    c.model.text.update(context_length=77, width=512, depth=12, num_heads=8, mlp_dim=2048)
    c.data.update(image_size=224)
    c.train.update(batch_size=256)
    return c
