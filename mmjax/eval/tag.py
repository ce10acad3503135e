"""Entity-level precision / recall / F1 of a tagger on a `--kind conll` split (CoNLL's way)."""

import numpy as np

from mmjax.data.conll import IGNORE
from mmjax.data.tagging import TAGS
from mmjax.errors import ConfigError
from mmjax.eval import EVALUATORS
from mmjax.eval.base import Evaluator
from mmjax.eval.entities import scores


def word_tags(predicted, labels, names):
    """([true tags], [predicted tags]) per row of predicted / labels ids [n, l]: the tags at the
    scored positions (first word pieces, label != IGNORE), in order, as names."""
    true, pred = [], []
    for p_row, l_row in zip(np.asarray(predicted), np.asarray(labels)):
        at = l_row != IGNORE
        true.append([names[i] for i in l_row[at]])
        pred.append([names[i] for i in p_row[at]])
    return true, pred


@EVALUATORS.register("tag")
class Entities(Evaluator):
    """The model's tag at each word's first piece is the word's tag; spans of true and predicted
    word tags are scored with mmjax/eval/entities.py: '<TYPE>/precision|recall|f1|support' per
    entity type, 'micro/...' and 'macro/...' (seqeval's classification_report, default mode),
    and 'token_accuracy' over words. A word cut off the row (past model.tag.text_length) is not
    scored; 'words' counts those scored."""

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        self.batch_spec = run_setup.task.batch_spec()
        self.names = tuple(getattr(self.dataset, "class_names", None) or ())
        num_tags = run_setup.config.model.tag.num_tags
        if len(self.names) != num_tags:
            raise ConfigError(f"dataset {self.spec['dataset']!r} has {len(self.names)} tags "
                              f"({', '.join(self.names) or 'none'}), the model "
                              f"model.tag.num_tags={num_tags}: set model.tag.num_tags="
                              f"{len(self.names) or 'the number of tags'}")

    def _predict(self, params, batch, index):
        logits = self.apply(params, (batch["text"],), None)
        return {"pred": logits.argmax(-1), "label": batch[TAGS]}

    def run(self, params):
        out = self.map_split(self._predict, params, self.batch_spec)
        scored = out["label"] != IGNORE
        true, pred = word_tags(out["pred"], out["label"], self.names)
        return {**scores(true, pred), "words": int(scored.sum()),
                "token_accuracy": float((out["pred"] == out["label"])[scored].mean())
                if scored.any() else 0.0}
