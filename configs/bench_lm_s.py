"""LM-S benchmark: a 4-layer GPT (width 256) next-token train step on packed rows of 256 tokens.

  python -m benchmarks.train_step configs/bench_lm_s.py           # mmjax alone
  .venv-bench/bin/python -m benchmarks.train_step configs/bench_lm_s.py --peers

GPT-2's vocabulary size (50,257) and layout (pre-LN, GELU tanh, learned positions, tied head,
no dropout), 4 heads, MLP 1024, batch 8 x 256 tokens, AdamW(3e-4, wd 0.1), float32, synthetic
tokens; every token is a target. Peers: transformers' GPT2LMHeadModel (PyTorch eager and
torch.compile) and FlaxGPT2LMHeadModel, built from the config hf_gpt2 export writes, so all
run the same model; each scores the full [b, l, vocab] logits. Hardware: 2 CPU cores.
Expected: see benchmarks/README.md (tokens/s and MFU); ~1 minute alone, ~8 with --peers.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "lm"
    c.data.update(tokenizer="clip_bpe", pack=True, pack_mask=False)
    c.model.update(scan=False)   # 4 layers: unrolled runs faster on CPU
    c.model.text.update(vocab_size=50257, context_length=256, width=256, depth=4, num_heads=4,
                        mlp_dim=1024, causal=True, pool="eot", pre_norm=True, final_norm=True,
                        activation="gelu_tanh", norm_eps=1e-5)
    c.model.lm.update(tie_embeddings=True, z_loss=0.0)
    c.train.update(batch_size=8)
    c.optim.update(lr=3e-4, weight_decay=0.1, warmup_steps=0, decay="constant", b2=0.95,
                   eps=1e-8, clip_norm=0.0)
    return c
