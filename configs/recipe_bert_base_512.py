"""Recipe: BERT-base masked-LM pretraining at 512 tokens, packed rows, on a v4-32 slice.

Build the corpus once (text files or JSONL with a "text" field), then check and train:

  mmjax data build /data/corpus/ --name text_corpus --kind text --text_unit block
  mmjax compile --config configs/recipe_bert_base_512.py --topology v4-32
  mmjax train --config configs/recipe_bert_base_512.py

Model: BERT-base (12 layers, hidden 768, 12 heads, MLP 3072, post-LN, vocab 30,522 as
bert-base-uncased: give its vocab.txt with --config.data.vocab_file=..., or a WordPiece
vocabulary of that size is learnt from the corpus), 80 predicted slots per row (15% of
512). Rows are packed from whole documents (`data.pack`: no padding). Global batch 1,024
rows = 512k tokens a step, 64 rows per chip on 16 v4 chips (32 GiB HBM each), FSDP,
bfloat16 compute, AdamW(2e-4, wd 0.01, b2 0.98), 200k steps.

`mmjax compile` on v4-32 (jax 0.10.2, libtpu 0.0.42.1): peak 16.1 GiB per chip of 32 GiB
HBM, fits (train state 0.08 GiB a chip); 2.91e+14 FLOPs a step, so a step takes at least 66
ms at 100% MFU, 165 ms at 40% MFU (about 6.2k rows, 3.2M tokens a second).
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "mlm"
    c.data.update(train="text_corpus", tokenizer="wordpiece", pack=True, worker_count=8)
    c.model.update(dtype="bfloat16", param_dtype="float32", scan=True, remat="dots")
    c.model.text.update(vocab_size=30522, context_length=512, width=768, depth=12, num_heads=12,
                        mlp_dim=3072, causal=False, pool="first", pre_norm=False,
                        embed_norm=True, final_norm=False, type_vocab_size=2, norm_eps=1e-12)
    c.model.mlm.update(max_predictions=80, mask_rate=0.15)
    c.train.update(steps=200_000, batch_size=1024, log_every=100, eval_every=5000,
                   checkpoint_every=2000)
    c.optim.update(lr=2e-4, warmup_steps=10_000, weight_decay=0.01, b2=0.98, eps=1e-6)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.evals.mlm = dict(type="mlm", dataset="text_corpus", split="validation")
    c.eval.batch_size = 512
    return c
