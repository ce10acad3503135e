"""ELECTRA's replaced-token detection: a small generator fills BERT-masked slots with tokens
it samples, a discriminator tells every real token original or replaced."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import flops
from mmjax.errors import ConfigError
from mmjax.losses import mlm_loss, replaced_token_loss
from mmjax.nn import electra, options
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task
from mmjax.tasks.mlm import masker


def replace_tokens(tokens, positions, weights, samples, pad_id: int):
    """The discriminator's inputs and targets.

    Args:
      tokens: int [b, l] the original text.
      positions, weights: [b, m] the masked slots (bert_mask's) and which are real.
      samples: int [b, m] the generator's tokens for those slots.
      pad_id: the padding token (no target there).

    Returns:
      dict with inputs [b, l] (tokens with each real slot set to its sample), labels [b, l]
      int32 (1 where the input differs from the original: a sample equal to the original
      token counts as original) and weights [b, l] float32 (1 at every non-padding token).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    rows = jnp.arange(tokens.shape[0])[:, None]
    at = jnp.where(weights > 0, positions, tokens.shape[1])   # padding slots: out of bounds, dropped
    inputs = tokens.at[rows, at].set(samples.astype(jnp.int32), mode="drop")
    return {"inputs": inputs, "labels": (inputs != tokens).astype(jnp.int32),
            "weights": (tokens != pad_id).astype(jnp.float32)}


def sample(rng, logits):
    """Token ids [...] drawn from softmax(logits [..., v]); no gradient flows through them."""
    return jax.random.categorical(rng, jax.lax.stop_gradient(jnp.asarray(logits, jnp.float32)))


def rtd_term(config, tokenizer, model):
    """Generator MLM + `model.rtd.disc_weight` x discriminator BCE on `batch['text']`; the
    step's rng masks (80/10/10, tasks/mlm.py's masker) and samples. Metrics: both losses,
    the generator's masked-token accuracy and the discriminator's token accuracy."""
    mask, pad_id = masker(config, tokenizer), int(config.model.text.get("pad_id", 0))
    disc_weight = float(config.model.rtd.disc_weight)

    def fn(params, batch, rng):
        k_mask, k_sample = jax.random.split(rng)
        tokens = batch["text"]
        masked = mask(k_mask, tokens)
        logits = model.apply({"params": params}, masked["inputs"], masked["positions"],
                             method="generator_logits")
        gen_loss, gen_metrics = mlm_loss(logits, masked["labels"], masked["weights"])
        fake = replace_tokens(tokens, masked["positions"], masked["weights"],
                              sample(k_sample, logits), pad_id)
        disc_logits = model.apply({"params": params}, fake["inputs"], method="discriminator_logits")
        disc_loss, disc_metrics = replaced_token_loss(disc_logits, fake["labels"], fake["weights"])
        return gen_loss + disc_weight * disc_loss, {
            "generator_loss": gen_loss, "discriminator_loss": disc_loss, **gen_metrics, **disc_metrics}

    return ExampleTerm(fn)


@TASKS.register("rtd")
class Rtd(Task):
    """ELECTRA pretraining: the discriminator (`text/...`) is the model kept for fine-tuning."""

    unit = "tokens"

    def build_model(self):
        m = self.config.model
        sizes = electra.generator_sizes(m)
        if sizes["width"] % sizes["num_heads"]:
            raise ConfigError(f"the RTD generator's width {sizes['width']} does not split into "
                              f"{sizes['num_heads']} heads: set model.rtd.generator_heads to a "
                              f"divisor of it (or model.rtd.generator_width)")
        if m.text.causal:
            raise ConfigError("task 'rtd' needs a bidirectional text tower: set model.text.causal=False")
        return electra.build(options.from_config(m, "text", self.tokenizer), sizes)

    def batch_spec(self):
        return {"text": jax.ShapeDtypeStruct((self.config.model.text.context_length,), np.int32)}

    def init_args(self, batch_size=1):
        positions = np.zeros((batch_size, self.config.model.mlm.max_predictions), np.int32)
        return "__call__", (self.example_batch(batch_size)["text"], positions)

    def loss_terms(self, model, mesh):
        return {"rtd": rtd_term(self.config, self.tokenizer, model)}

    def default_evals(self):
        return {"rtd": dict(type="rtd", dataset=self.train_datasets()[0])}

    def examples_per_step(self):
        return self.config.train.batch_size * self.config.model.text.context_length

    def train_flops(self):
        m = self.config.model
        return flops.rtd_train_flops(self.config.train.batch_size, m.text, electra.generator_sizes(m),
                                     m.mlm.max_predictions, flops.prunes(m))
