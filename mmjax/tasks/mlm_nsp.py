"""BERT's original pre-training: masked-token prediction + next-sentence prediction on pairs."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import flops
from mmjax.data.sentence_pairs import LABEL, TYPES
from mmjax.errors import ConfigError
from mmjax.losses import mlm_loss
from mmjax.nn import options
from mmjax.nn.bert import BertPreTraining, NspHead
from mmjax.nn.text import TextTransformer
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task
from mmjax.tasks.mlm import masker, mlm_head


def batch_spec(length):
    """Pair rows: 'text' ([CLS] A [SEP] B [SEP], padded), 'token_types' (0 for A, 1 for B) and
    'is_random' (1 when B is from another document); mmjax/data/sentence_pairs.py makes them."""
    return {"text": jax.ShapeDtypeStruct((length,), np.int32),
            TYPES: jax.ShapeDtypeStruct((length,), np.int32),
            LABEL: jax.ShapeDtypeStruct((), np.int32)}


def nsp_loss(logits, is_random):
    """Mean cross-entropy of NSP logits [b, 2] against labels [b] (0: B follows A) -> (loss,
    {'nsp_accuracy'}), in float32."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    labels = jnp.asarray(is_random, jnp.int32)
    loss = -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()
    return loss, {"nsp_accuracy": (jnp.argmax(logp, axis=-1) == labels).astype(jnp.float32).mean()}


def mlm_nsp_term(config, tokenizer, model, weight=1.0):
    """MLM + NSP of one forward pass over the masked pair rows; the masker skips the special
    ids ([CLS], [SEP], [PAD]), so the row's structure is never masked. Logs both parts."""
    mask = masker(config, tokenizer)

    def fn(params, batch, rng):
        masked = mask(rng, batch["text"])
        mlm_logits, nsp_logits = model.apply({"params": params}, masked["inputs"],
                                             masked["positions"], batch[TYPES])
        mlm, mlm_metrics = mlm_loss(mlm_logits, masked["labels"], masked["weights"])
        nsp, nsp_metrics = nsp_loss(nsp_logits, batch[LABEL])
        return mlm + nsp, {**mlm_metrics, **nsp_metrics, "mlm_loss": mlm, "nsp_loss": nsp}

    return ExampleTerm(fn, weight)


@TASKS.register("mlm+nsp")
class MlmNsp(Task):
    """A BERT encoder reads sentence-pair rows built from the training documents; loss = MLM
    (`model.mlm.max_predictions` per row) + NSP (does B follow A?), logged as `mlm_loss` and
    `nsp_loss` beside their sum, `mlm_nsp_loss`."""

    unit = "tokens"

    def build_model(self):
        m = self.config.model
        if m.text.causal or m.text.type_vocab_size < 2:
            raise ConfigError("task 'mlm+nsp' reads pairs in both directions with segment ids: "
                              "set model.text.causal=False and model.text.type_vocab_size=2")
        return BertPreTraining(TextTransformer(options.from_config(m, "text", self.tokenizer)),
                               mlm_head(m), NspHead(dtype=np.dtype(m.dtype),
                                                    param_dtype=np.dtype(m.param_dtype)))

    def batch_spec(self):
        return batch_spec(self.config.model.text.context_length)

    def init_args(self, batch_size=1):
        batch = self.example_batch(batch_size)
        positions = np.zeros((batch_size, self.config.model.mlm.max_predictions), np.int32)
        return "__call__", (batch["text"], positions, batch[TYPES])

    def loss_terms(self, model, mesh):
        return {"mlm_nsp": mlm_nsp_term(self.config, self.tokenizer, model)}

    def default_evals(self):
        dataset = self.train_datasets()[0]
        return {"mlm": dict(type="mlm", dataset=dataset), "nsp": dict(type="nsp", dataset=dataset)}

    def examples_per_step(self):
        return self.config.train.batch_size * self.config.model.text.context_length

    def train_flops(self):
        """MLM's with the last layer at [CLS] too, plus the pooler and the 2-way head, all 3x."""
        m, b = self.config.model, self.config.train.batch_size
        t = m.text
        rows = m.mlm.max_predictions + 1 if flops.prunes(m) else None
        return 3 * (flops.encoder_forward(b, t.context_length, t.width, t.mlp_dim, t.depth, rows)
                    + flops.mlm_head_forward(b, t, m.mlm.max_predictions)
                    + 2 * b * t.width * (t.width + 2))
