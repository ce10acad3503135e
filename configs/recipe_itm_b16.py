"""Recipe: BLIP-style fused pretraining (contrastive + image-text matching on hard negatives +
image-conditioned MLM), ViT-B/16 and a BERT-base text tower, global batch 4,096, on a v4-64
slice (32 chips).

  mmjax data build '/data/laion/{00000..09999}.tar' --name laion_subset --max_side 256
  mmjax data build /data/ILSVRC2012_img_val.tar --name imagenet --kind imagenet
  mmjax compile --config configs/recipe_itm_b16.py --topology v4-64
  mmjax train --config configs/recipe_itm_b16.py

Model: ViT-B/16 at 224 px (its 197 tokens after the final LayerNorm are the fusion's context)
and BERT-base (12 layers, 768 wide, 12 heads, 35 tokens as BLIP's pretraining captions,
WordPiece 30,522 learnt from the captions) whose every block also cross-attends to the image
tokens in the fused pass (model.fusion: kind 'cross', layout 'blip': one set of text weights,
the cross-attention skipped in the contrastive pass). Loss = InfoNCE + ITM (one hard negative
text per image and image per text, drawn from the global batch by the contrastive softmax)
+ MLM through the fused pass (15%, 6 slots). 128 pairs per chip on 32 v4 chips (32 GiB HBM
each), FSDP, bfloat16 compute, dots rematerialisation; AdamW(2e-4, wd 0.05) as BLIP.

`mmjax compile --topology v4-64` (jax 0.10.2, libtpu 0.0.42.1; 12 min on a loaded 2-core
CPU): peak 28.5 GiB per chip of 32 GiB HBM, fits; 1.96e15 FLOPs a step, >= 223 ms at 100% MFU
(README, "Will it fit?").
"""

from mmjax.configs import recipe_clip_b16_32k


def get_config():
    c = recipe_clip_b16_32k.get_config()
    c.task = "clip+itm+mlm"
    c.data.update(tokenizer="wordpiece")
    c.model.update(embed_dim=256, remat="dots")
    c.model.text.update(vocab_size=30522, context_length=35, width=768, depth=12, num_heads=12,
                        mlp_dim=3072, causal=False, pool="first", type_vocab_size=0)
    c.model.fusion.update(kind="cross", layout="blip")
    c.model.itm.update(weight=1.0)
    c.model.mlm.update(max_predictions=6, mask_rate=0.15, weight=1.0)
    c.train.update(steps=200_000, batch_size=4096)
    c.optim.update(lr=2e-4, warmup_steps=3000, weight_decay=0.05)
    c.evals.itm = dict(type="itm", dataset="laion_subset", split="validation")
    c.evals.retrieval = dict(type="retrieval", dataset="laion_subset", split="validation",
                             rerank_k=16)
    return c
