"""Token classification (BERT's NER fine-tune): a linear head on every word piece, the loss on
the first piece of each word."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import flops
from mmjax.data.conll import IGNORE
from mmjax.data.tagging import TAGS
from mmjax.nn import options
from mmjax.nn.tagger import Tagger
from mmjax.nn.text import TextTransformer
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm, Task


def tag_loss(logits, labels):
    """Mean cross-entropy of logits [b, l, tags] over the positions whose label [b, l] is not
    IGNORE (first word pieces), in float32 -> (loss, {'tag_accuracy'}); 0 when none is labelled."""
    logits = jnp.asarray(logits, jnp.float32)
    scored = labels != IGNORE
    safe = jnp.where(scored, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    count = jnp.maximum(scored.sum(), 1)
    correct = (logits.argmax(-1) == labels) & scored
    return (losses * scored).sum() / count, {"tag_accuracy": correct.sum() / count}


@TASKS.register("tag")
class Tag(Task):
    """The text tower + a zero-initialised linear head over `model.tag.num_tags` on each token;
    rows are a `--kind conll` dataset's sentences as word pieces (mmjax/data/tagging.py), cut
    to `model.tag.text_length` (0: model.text.context_length). Logs `tag_loss` and
    `tag_accuracy` (of the scored first pieces)."""

    def _text_length(self):
        m = self.config.model
        return m.tag.get("text_length", 0) or m.text.context_length

    def build_model(self):
        m = self.config.model
        tower = TextTransformer(options.from_config(m, "text", self.tokenizer))
        return Tagger(m.tag.num_tags, text=tower, param_dtype=np.dtype(m.param_dtype))

    def batch_spec(self):
        length = self._text_length()
        return {"text": jax.ShapeDtypeStruct((length,), np.int32),
                TAGS: jax.ShapeDtypeStruct((length,), np.int32)}

    def init_args(self, batch_size=1):
        return "__call__", (self.example_batch(batch_size)["text"],)

    def loss_terms(self, model, mesh):
        def fn(params, batch, rng):
            return tag_loss(model.apply({"params": params}, batch["text"]), batch[TAGS])

        return {"tag": ExampleTerm(fn)}

    def default_evals(self):
        return {"tag": dict(type="tag", dataset=self.train_datasets()[0])}

    def train_flops(self):
        m, b, length = self.config.model, self.config.train.batch_size, self._text_length()
        t = m.text
        forward = flops.encoder_forward(b, length, t.width, t.mlp_dim, t.depth, None)
        return 3 * (forward + 2 * b * length * t.width * m.tag.num_tags)
