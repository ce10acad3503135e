"""BERT-style masked language modelling: 80/10/10 masking on device, a tied MLM head."""

import functools

import jax
import numpy as np

from mmjax import flops
from mmjax.losses import mlm_loss
from mmjax.masking import bert_mask
from mmjax.nn import options
from mmjax.nn.bert import BertMlm, MlmHead
from mmjax.nn.text import TextTransformer
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task


def mlm_head(model_config):
    text = model_config.text
    return MlmHead(text.activation, text.norm_eps, dtype=np.dtype(model_config.dtype),
                   param_dtype=np.dtype(model_config.param_dtype))


def masker(config, tokenizer):
    """(rng, tokens [b, l]) -> bert_mask's dict, with the config's rate and the tokenizer's ids."""
    c = config.model.mlm
    return functools.partial(bert_mask, vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                             special_ids=tuple(tokenizer.special_ids),
                             max_predictions=c.max_predictions, mask_rate=c.mask_rate)


def mlm_term(config, tokenizer, model, weight=1.0):
    """The MLM loss on `batch['text']`, masked afresh from the step's rng; any model with an
    `mlm_logits(tokens, positions)` method."""
    mask = masker(config, tokenizer)

    def fn(params, batch, rng):
        masked = mask(rng, batch["text"])
        logits = model.apply({"params": params}, masked["inputs"], masked["positions"],
                             method="mlm_logits")
        return mlm_loss(logits, masked["labels"], masked["weights"])

    return ExampleTerm(fn, weight)


@TASKS.register("mlm")
class Mlm(Task):
    """A text encoder predicts `model.mlm.max_predictions` masked tokens per sequence."""

    unit = "tokens"

    def build_model(self):
        m = self.config.model
        return BertMlm(TextTransformer(options.from_config(m, "text", self.tokenizer)), mlm_head(m))

    def batch_spec(self):
        return {"text": jax.ShapeDtypeStruct((self.config.model.text.context_length,), np.int32)}

    def init_args(self, batch_size=1):
        positions = np.zeros((batch_size, self.config.model.mlm.max_predictions), np.int32)
        return "__call__", (self.example_batch(batch_size)["text"], positions)

    def loss_terms(self, model, mesh):
        return {"mlm": mlm_term(self.config, self.tokenizer, model)}

    def default_evals(self):
        return {"mlm": dict(type="mlm", dataset=self.train_datasets()[0])}

    def examples_per_step(self):
        return self.config.train.batch_size * self.config.model.text.context_length

    def train_flops(self):
        m = self.config.model
        return flops.mlm_train_flops(self.config.train.batch_size, m.text, m.mlm.max_predictions,
                                     flops.prunes(m))
