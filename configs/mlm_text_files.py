"""BERT-style MLM on your own text files, packed into full rows (no padding).

Build the corpus once (a document per blank-line block of the files, `--text_unit file` for
a document per file; JSONL with a "text" field works too). Packing keeps the first 4,088
tokens (a window of data.pack_window=8 rows) of a longer document, so keep documents short:

  mmjax data build /data/corpus/ --name my_text --kind text --text_unit block

Train (a WordPiece vocabulary of 8,192 is learnt from the corpus on first use, or give a
pretrained one with --config.data.vocab_file=vocab.txt and a matching model.text.vocab_size):

  mmjax train --config configs/mlm_text_files.py             # BERT-base, 512 tokens
  mmjax train --config configs/mlm_text_files.py:cpu         # a 2-layer model on a laptop

Hardware: `tpu` is BERT-base (110M) at 512 tokens, global batch 256, for a v5p-8 or 8 GPUs;
expected results depend on the corpus. `cpu` (2 cores): held-out masked-token accuracy well
above the most-frequent-token baseline within a few hundred steps. Packing joins documents
with [SEP] and starts every row with [CLS] (mmjax/data/packing.py); masking never picks a
special token.
"""

from mmjax.config import defaults


def get_config(variant="tpu"):
    c = defaults()
    c.task = "mlm"
    c.data.update(train="my_text", tokenizer="wordpiece", pack=True, worker_count=4)
    c.evals.mlm = dict(type="mlm", dataset="my_text", split="validation")
    c.model.text.update(causal=False, pool="first", pre_norm=False, embed_norm=True,
                        final_norm=False, type_vocab_size=2, norm_eps=1e-12, vocab_size=8192)
    if variant == "tpu":
        c.model.update(dtype="bfloat16", remat="dots")
        c.model.text.update(context_length=512, width=768, depth=12, num_heads=12, mlp_dim=3072)
        c.model.mlm.update(max_predictions=80)
        c.train.update(steps=100_000, batch_size=256, log_every=100, eval_every=5000,
                       checkpoint_every=2000)
        c.optim.update(lr=1e-4, warmup_steps=10_000, weight_decay=0.01, b2=0.999)
        c.eval.batch_size = 256
    elif variant == "cpu":
        c.data.worker_count = 0
        c.model.scan = False
        c.model.text.update(context_length=128, width=128, depth=2, num_heads=4, mlp_dim=512)
        c.model.mlm.update(max_predictions=20)
        c.train.update(steps=600, batch_size=32, log_every=25, eval_every=300,
                       checkpoint_every=300)
        c.optim.update(lr=2e-3, warmup_steps=50, weight_decay=0.01, b2=0.999)
        c.eval.batch_size = 64
    else:
        raise ValueError(f"unknown variant {variant!r}: use 'tpu' or 'cpu'")
    return c
