"""Causal language modelling: next-token cross-entropy on the causal text tower, packed or not."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import flops
from mmjax.errors import ConfigError
from mmjax.losses import chunked_next_token_loss, next_token_loss
from mmjax.nn import options
from mmjax.nn.lm import CausalLM, document_ids
from mmjax.nn.text import TextTransformer
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task


def end_id(tokenizer):
    """The id that ends a document: the tokenizer's `eos_id` (else its `eot_id`)."""
    eos = getattr(tokenizer, "eos_id", None)
    return tokenizer.eot_id if eos is None else eos


def target_weights(tokens, eos_id: int, packed: bool):
    """[b, l - 1] float32: 1 where tokens[:, 1:] is a target. Packed rows: every token (a
    document's first token follows the previous one's end). Padded rows (one document, then
    padding): the tokens up to and including the first `eos_id`."""
    if packed:
        return jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.float32)
    ended = jnp.cumsum(tokens == eos_id, axis=1)[:, :-1]   # eos at or before the input row
    return (ended == 0).astype(jnp.float32)


def lm_term(config, tokenizer, model, weight=1.0):
    """The next-token loss on `batch['text']`; any model with an `lm_logits(tokens, mask)`
    method (and `hidden` / `head` ones when `model.lm.chunk` runs the head in chunks).
    `data.pack_mask`: attention stays inside each packed document (the attention gets the
    document ids [b, l], never an [l, l] mask where the kernel needs none, nn/splash.py)."""
    eos, packed = end_id(tokenizer), bool(config.data.pack)
    use_mask, z_loss = bool(config.data.get("pack_mask", False)), float(config.model.lm.z_loss)
    chunk = int(config.model.lm.get("chunk", 0))

    def fn(params, batch, rng):
        tokens = batch["text"]
        mask = document_ids(tokens, eos) if use_mask else None
        weights = target_weights(tokens, eos, packed)
        if not chunk:
            logits = model.apply({"params": params}, tokens, mask, method="lm_logits")
            return next_token_loss(logits, tokens, weights, z_loss)
        hidden = model.apply({"params": params}, tokens, mask, method="hidden")
        head = lambda h: model.apply({"params": params}, h, method="head")   # noqa: E731
        return chunked_next_token_loss(head, hidden, tokens, weights, z_loss, chunk)

    return ExampleTerm(fn, weight)


@TASKS.register("lm")
class Lm(Task):
    """A causal text tower predicts every next token (GPT-style)."""

    unit = "tokens"

    def build_model(self):
        m = self.config.model
        if not m.text.causal:
            raise ConfigError("task 'lm' needs a causal text tower: set model.text.causal=True")
        if self.config.data.get("pack_mask", False) and not self.config.data.pack:
            raise ConfigError("data.pack_mask=True masks packed documents, but data.pack is "
                              "False: set data.pack=True (or data.pack_mask=False)")
        return CausalLM(TextTransformer(options.from_config(m, "text", self.tokenizer)),
                        tie_embeddings=bool(m.lm.tie_embeddings))

    def batch_spec(self):
        return {"text": jax.ShapeDtypeStruct((self.config.model.text.context_length,), np.int32)}

    def init_args(self, batch_size=1):
        return "__call__", (self.example_batch(batch_size)["text"],)

    def loss_terms(self, model, mesh):
        return {"lm": lm_term(self.config, self.tokenizer, model)}

    def default_evals(self):
        return {"lm": dict(type="lm", dataset=self.train_datasets()[0])}

    def examples_per_step(self):
        return self.config.train.batch_size * self.config.model.text.context_length

    def train_flops(self):
        return flops.lm_train_flops(self.config.train.batch_size, self.config.model.text)
