"""Recipe: a GPT-2-medium-sized causal LM at 2,048 tokens, packed documents, on a v5p-32 slice.

Build the corpus once (text files or JSONL with a "text" field), then check and train:

  mmjax data build /data/corpus/ --name text_corpus --kind text --text_unit file
  mmjax compile --config configs/recipe_lm_2k.py --topology v5p-32
  mmjax train --config configs/recipe_lm_2k.py

Model: GPT-2 medium's shape (24 pre-LN layers, width 1,024, 16 heads of 64, MLP 4,096, GELU
(tanh), learned positions, final LayerNorm, head tied to the token table; ~350M parameters
with a WordPiece vocabulary of 50,304 learnt from the corpus), exportable with `mmjax export
--format hf_gpt2`. Rows of 2,048 tokens packed from whole documents, attention kept inside
each document (`data.pack_mask`: document ids reach the attention, no [l, l] mask); the head
runs 256 positions at a time (`model.lm.chunk`: no [rows, 2,048, 50,304] float32 logits).
Global batch 256 rows = 524k tokens a step (GPT-3 medium's), 16 rows per chip on 16 v5p
chips (95 GiB HBM each), FSDP, bfloat16 compute, matmuls without batch dimensions kept for
the backward (`remat='dots_no_batch'`: attention is recomputed), AdamW(3e-4, b2 0.95, wd
0.1), 100k steps (52B tokens). Attention: 'auto', the splash kernel on TPU from 2,048 tokens
(`model.splash_min_length`, nn/splash.py).

Longer context at the same tokens per chip (`--config.model.text.context_length=8192
--config.train.batch_size=64`, or 32768 and 16): the README's table ("Long context") gives
`mmjax compile`'s per-chip peak on v5p-8 for XLA's attention (`--config.model.attention=xla`)
against splash at 2k, 8k and 32k tokens.

`mmjax compile` on v5p-32 (jax 0.10.2, libtpu 0.0.42.1; 'auto' = splash): peak 16.0 GiB per
chip of 95 GiB HBM, fits (train state 0.25 GiB a chip); 1.43e+15 FLOPs a step, so a step
takes at least 195 ms at 100% MFU, 486 ms at 40% MFU (about 1.1M tokens a second). With
XLA's attention the same step needs 7.3 GiB a chip more at 2k tokens (v5p-8), and does not
fit at 32k. Not trained here: these are the compile's figures, not a measured loss.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "lm"
    c.data.update(train="text_corpus", tokenizer="wordpiece", pack=True, pack_mask=True,
                  worker_count=8)
    c.model.update(dtype="bfloat16", param_dtype="float32", scan=True, remat="dots_no_batch",
                   attention="auto", splash_min_length=2048)
    c.model.text.update(vocab_size=50304, context_length=2048, width=1024, depth=24,
                        num_heads=16, mlp_dim=4096, causal=True, pool="eot", pre_norm=True,
                        final_norm=True, activation="gelu_tanh", position="learned")
    c.model.lm.update(tie_embeddings=True, z_loss=1e-4, chunk=256)
    c.train.update(steps=100_000, batch_size=256, log_every=100, eval_every=5000,
                   checkpoint_every=2000)
    c.optim.update(lr=3e-4, warmup_steps=2000, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8,
                   clip_norm=1.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.evals.lm = dict(type="lm", dataset="text_corpus", split="validation")
    c.eval.batch_size = 64
    return c
