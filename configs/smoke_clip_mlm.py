"""Smoke CLIP + MLM: contrastive loss on image/caption pairs plus masked-caption prediction.

  mmjax train --config configs/smoke_clip_mlm.py

Same digits as smoke_clip.py, but the text tower is BERT-style (bidirectional, [CLS]
pooling, WordPiece) so it can also predict masked caption tokens through a tied MLM head;
total loss = InfoNCE + model.mlm.weight * MLM. Hardware: 2 CPU cores; ~3 minutes.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "clip+mlm"
    # Trained on the digits; the WordPiece vocabulary is learnt from English prose.
    c.data.update(train="digit_captions", tokenizer="wordpiece", tokenizer_data=("prose",),
                  crop="resize", mean=(0.5,) * 3, std=(0.5,) * 3)  # 28-px digits, whole, in [-1, 1]
    c.model.update(embed_dim=64, scan=False)  # 2-3 layers: unrolled runs faster on CPU
    c.model.image.update(patch_size=7, width=96, depth=3, num_heads=4, mlp_dim=384)
    c.model.text.update(vocab_size=8192, context_length=16, width=96, depth=2, num_heads=4,
                        mlp_dim=384, causal=False, pool="first", type_vocab_size=0)
    c.model.mlm.update(max_predictions=3, weight=0.5)
    c.train.update(steps=500, batch_size=128, log_every=25, eval_every=250, checkpoint_every=250)
    c.optim.update(lr=2e-3, warmup_steps=50, weight_decay=0.01)
    c.evals.zeroshot = dict(type="zeroshot", dataset="digit_captions")
    c.evals.retrieval = dict(type="retrieval", dataset="digit_captions")
    c.evals.mlm = dict(type="mlm", dataset="digit_captions")   # masked caption tokens
    return c
