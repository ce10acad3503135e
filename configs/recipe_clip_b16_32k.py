"""Recipe: CLIP ViT-B/16 at 224 px, global batch 32,768, on a v5p-256 slice (128 chips).

Build the image-text pairs once (img2dataset's webdataset shards; images kept at <= 256 px):

  mmjax data build '/data/laion/{00000..09999}.tar' --name laion_subset --max_side 256
  mmjax data build /data/ILSVRC2012_img_val.tar --name imagenet --kind imagenet   # zero-shot

Check that it fits (on any machine: launch/install.sh compile), then train on every host of
the slice (launch/tpu_vm.sh run ... -- train ...):

  mmjax compile --config configs/recipe_clip_b16_32k.py --topology v5p-256
  mmjax train --config configs/recipe_clip_b16_32k.py

Model: OpenAI CLIP ViT-B/16 (image width 768, 12 layers; text width 512, 12 layers,
context 77, BPE 49408), embed dim 512, InfoNCE over the whole global batch, bfloat16
compute with float32 parameters, AdamW(5e-4, wd 0.2, b2 0.98), 100k steps (3.3B pairs
seen). Mesh: FSDP over all 128 chips (params and optimizer state sharded 128 ways), 256
pairs per chip.

`mmjax compile` on v5p-256 (jax 0.10.2, libtpu 0.0.42.1): peak 46.7 GiB per chip of 95 GiB
HBM, fits (train state 0.01 GiB a chip); 3.76e+15 FLOPs a step, so a step takes at least 64
ms at 100% MFU, 160 ms at 40% MFU (about 205k pairs/s).
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "clip"
    c.data.update(train="laion_subset", tokenizer="clip_bpe", image_size=224, image_channels=3,
                  worker_count=16)
    c.model.update(embed_dim=512, dtype="bfloat16", param_dtype="float32", scan=True,
                   remat="none", contrastive_loss="infonce")
    c.model.image.update(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072)
    c.model.text.update(vocab_size=49408, context_length=77, width=512, depth=12, num_heads=8,
                        mlp_dim=2048)
    c.train.update(steps=100_000, batch_size=32_768, log_every=100, eval_every=5000,
                   checkpoint_every=1000)
    c.optim.update(lr=5e-4, warmup_steps=2000, weight_decay=0.2, b1=0.9, b2=0.98, eps=1e-6)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.evals.retrieval = dict(type="retrieval", dataset="laion_subset", split="validation")
    c.evals.zeroshot = dict(type="zeroshot", dataset="imagenet", split="validation")
    c.eval.batch_size = 4096
    return c
