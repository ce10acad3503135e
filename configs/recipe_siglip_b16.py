"""Recipe: SigLIP ViT-B/16 (sigmoid loss) at 224 px, global batch 32,768, on a v5e-256 pod.

The same towers and data as recipe_clip_b16_32k.py; the loss is SigLIP's pairwise sigmoid
(`model.contrastive_loss='sigmoid'`, learnable bias starting at -10), which needs no
softmax over the global batch: each chip scores its images against every chip's texts in
blocks (mmjax/losses.py).

  mmjax data build '/data/laion/{00000..09999}.tar' --name laion_subset --max_side 256
  mmjax data build /data/ILSVRC2012_img_val.tar --name imagenet --kind imagenet
  mmjax compile --config configs/recipe_siglip_b16.py --topology v5e-256
  mmjax train --config configs/recipe_siglip_b16.py

Hardware: v5e-256 (256 chips, 16 GiB HBM each), 128 pairs per chip, FSDP over all chips,
bfloat16 compute, dots rematerialisation (without it the step needs 23.2 GiB of
temporaries a chip: `mmjax compile ... --config.model.remat=none` says so and names this
knob). AdamW(1e-3, wd 1e-4, b2 0.95) as in the SigLIP paper, 100k steps.

`mmjax compile` on v5e-256 (jax 0.10.2, libtpu 0.0.42.1): peak 9.7 GiB per chip of 16 GiB
HBM, fits (train state 0.01 GiB a chip); 3.76e+15 FLOPs a step, so a step takes at least 75
ms at 100% MFU, 186 ms at 40% MFU (about 176k pairs/s).
"""

from mmjax.configs import recipe_clip_b16_32k


def get_config():
    c = recipe_clip_b16_32k.get_config()
    c.model.update(contrastive_loss="sigmoid", init_logit_bias=-10.0, remat="dots")
    c.optim.update(lr=1e-3, warmup_steps=5000, weight_decay=1e-4, b2=0.95)
    return c
