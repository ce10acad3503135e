"""CLIP on your own image–text pairs: WebDataset shards (as img2dataset writes them) or a
caption table, scored zero-shot on your own labelled photos (an ImageFolder tree).

Build the data once into the data dir (shared by the hosts, or built on each):

  mmjax data build '/data/pairs/{00000..00099}.tar' --name my_pairs --max_side 320
  #   or a table: mmjax data build /data/pairs.csv --name my_pairs   (image path + caption columns)
  mmjax data build /data/photos --name my_photos --val_fraction 0   # root/CLASS/*.jpg

Train, then evaluate on the held-out 1% of the pairs (retrieval) and the photos (zero-shot):

  mmjax train --config configs/clip_webdataset.py            # ViT-B/16, 224 px, batch 4096
  mmjax train --config configs/clip_webdataset.py:cpu        # the same pipeline on a laptop

Other names: --config.data.train=cc3m:0.7,my_pairs:0.3 (a mixture),
--config.evals.zeroshot.dataset=..., --config.evals.retrieval.dataset=...

Hardware: `tpu` is sized for a v5p-64 slice or 8+ H100s (global batch 4096); expected
results depend on your data (we have not trained it on a public set yet). `cpu` is a 4-layer
ViT-S/32 at 224 px that takes ~1 s a step on 2 cores, so the input pipeline (JPEG decode,
random-resized-crop, tokenise) is measured against a real step: train/data_wait_frac stays
under 0.05 (benchmarks/input_pipeline.py; README "Your own data").
"""

from mmjax.config import defaults


def get_config(variant="tpu"):
    c = defaults()
    c.task = "clip"
    # 224-px RGB, open_clip's train crop (area 0.9-1) and CLIP's mean/std (the defaults).
    c.data.update(train="my_pairs", tokenizer="clip_bpe", image_size=224, image_channels=3,
                  worker_count=8)
    c.evals.retrieval = dict(type="retrieval", dataset="my_pairs", split="validation")
    c.evals.zeroshot = dict(type="zeroshot", dataset="my_photos", split="train")
    if variant == "tpu":
        c.model.update(embed_dim=512, dtype="bfloat16", remat="dots")
        c.model.image.update(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072)
        c.model.text.update(context_length=77, width=512, depth=12, num_heads=8, mlp_dim=2048)
        c.train.update(steps=30_000, batch_size=4096, log_every=100, eval_every=2000,
                       checkpoint_every=1000)
        c.optim.update(lr=1e-3, warmup_steps=2000, weight_decay=0.2)
        c.mesh.update(data=-1, fsdp=1)
        c.eval.batch_size = 1024
    elif variant == "cpu":
        c.data.worker_count = 1
        c.model.update(embed_dim=128, scan=False)
        c.model.image.update(patch_size=32, width=256, depth=4, num_heads=4, mlp_dim=1024)
        c.model.text.update(context_length=32, width=256, depth=4, num_heads=4, mlp_dim=1024)
        c.train.update(steps=500, batch_size=32, log_every=10, eval_every=250,
                       checkpoint_every=250)
        c.optim.update(lr=5e-4, warmup_steps=50, weight_decay=0.1)
        c.eval.batch_size = 64
    else:
        raise ValueError(f"unknown variant {variant!r}: use 'tpu' or 'cpu'")
    return c
