"""Recipe: ELECTRA-base replaced-token detection at 512 tokens, packed rows, on a v4-8 slice.

  mmjax data build /data/corpus/ --name text_corpus --kind text --text_unit block
  mmjax compile --config configs/recipe_electra_base_512.py --topology v4-8
  mmjax train --config configs/recipe_electra_base_512.py

Model: ELECTRA-base as its paper sizes it: the discriminator is BERT-base (12 layers, hidden
768, 12 heads, MLP 3072, post-LN, learned positions, vocab 30,522: give bert-base-uncased's
vocab.txt with --config.data.vocab_file=..., or a WordPiece vocabulary of that size is learnt
from the corpus), the generator a third of its width (256 wide, 4 heads, MLP 1024, 12 layers)
on the shared embeddings; 15% of each row masked (77 slots), loss = generator MLM + 50 x
discriminator BCE. Global batch 256 rows of 512 tokens, 64 rows per chip on 4 v4 chips,
FSDP, bfloat16 compute, AdamW(2e-4, wd 0.01) for 766k steps, ELECTRA-base's schedule.
Exports with `mmjax export --format hf_electra`.

`mmjax compile --topology v4-8` (jax 0.10.2, libtpu 0.0.42.1; 190 s on a 2-core CPU): peak
22.2 GiB per chip of 32 GiB HBM, fits; 8.69e13 FLOPs a step, >= 79 ms at 100% MFU (README,
"Will it fit?").
"""

from mmjax.configs import recipe_bert_base_512


def get_config():
    c = recipe_bert_base_512.get_config()
    c.task = "rtd"
    c.model.mlm.update(max_predictions=77, mask_rate=0.15)
    c.model.rtd.update(generator_width=256, generator_heads=4, generator_mlp_dim=1024,
                       generator_depth=12, disc_weight=50.0)
    c.train.update(steps=766_000, batch_size=256)
    c.optim.update(lr=2e-4, warmup_steps=10_000, weight_decay=0.01, b2=0.999)
    c.evals.rtd = dict(type="rtd", dataset="text_corpus", split="validation")
    return c
