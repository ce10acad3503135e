"""Recipe: CLIP + MLM (contrastive pairs plus masked-caption prediction), ViT-B/16 and a
BERT-base text tower, global batch 16,384, on a v4-256 slice (128 chips).

  mmjax data build '/data/laion/{00000..09999}.tar' --name laion_subset --max_side 256
  mmjax data build /data/ILSVRC2012_img_val.tar --name imagenet --kind imagenet
  mmjax compile --config configs/recipe_clip_mlm.py --topology v4-256
  mmjax train --config configs/recipe_clip_mlm.py

Loss: InfoNCE over the global batch + 0.5 x MLM on the same captions (the text tower is
bidirectional with [CLS] pooling, so it also fills masks: task 'clip+mlm'). Image tower
ViT-B/16 at 224 px; text tower BERT-base (12 layers, 768 wide, 64 tokens, WordPiece
30,522 learnt from the captions), 10 predicted slots per caption. 128 pairs per chip on
128 v4 chips (32 GiB HBM each), FSDP, bfloat16 compute, dots rematerialisation.

`mmjax compile` on v4-256 (jax 0.10.2, libtpu 0.0.42.1): peak 11.6 GiB per chip of 32 GiB
HBM, fits (train state 0.02 GiB a chip); 2.64e+15 FLOPs a step, so a step takes at least 75
ms at 100% MFU, 188 ms at 40% MFU (about 87k pairs/s).
"""

from mmjax.configs import recipe_clip_b16_32k


def get_config():
    c = recipe_clip_b16_32k.get_config()
    c.task = "clip+mlm"
    c.data.update(tokenizer="wordpiece")
    c.model.update(remat="dots")
    c.model.text.update(vocab_size=30522, context_length=64, width=768, depth=12, num_heads=12,
                        mlp_dim=3072, causal=False, pool="first", type_vocab_size=0)
    c.model.mlm.update(max_predictions=10, mask_rate=0.15, weight=0.5)
    c.train.update(batch_size=16_384)
    c.evals.mlm = dict(type="mlm", dataset="laion_subset", split="validation")
    return c
