"""Captioning on held-out images: caption perplexity, and whether greedy captions name the image's class."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import generate as gen
from mmjax.eval import EVALUATORS, prompts
from mmjax.eval.base import Evaluator
from mmjax.tasks.lm import end_id, target_weights

SHOWN = 3   # greedy captions reported as text (`caption_<i>`: images spread over the split)


def named_classes(caption: str, class_names) -> set:
    """The labels whose class name `caption` holds as a whole word or phrase (case-insensitive;
    'seven' in 'a handwritten seven.', not in 'seventy'), a name found only inside a longer
    found name's span not counting ('cat' inside 'wild cat')."""
    text = caption.lower()
    spans = {}
    for label, name in enumerate(class_names):
        pattern = rf"(?<!\w){re.escape(name.lower().strip())}(?!\w)"
        spans[label] = [m.span() for m in re.finditer(pattern, text)]

    def inside_longer(span, label):
        return any(a <= span[0] and span[1] <= b and (b - a) > (span[1] - span[0])
                   for other, found in spans.items() if other != label for a, b in found)

    return {label for label, found in spans.items()
            if any(not inside_longer(span, label) for span in found)}


def names_right_class(caption: str, label: int, class_names) -> bool:
    """The caption names class `label` and no other class (a caption listing every class
    does not count)."""
    return named_classes(caption, class_names) == {int(label)}


@EVALUATORS.register("caption")
class Caption(Evaluator):
    """`perplexity`: exp(mean NLL) of the split's captions given their images (targets: the
    words and the end token, as the caption term's) over `tokens` targets. Labelled data
    with class names: `named_class`, the fraction of the split's images whose greedy caption
    (from the start token, up to the end token or context_length - 1 tokens) names the
    image's class and no other (`names_right_class`); `caption_<i>`: 'CLASS → CAPTION' of
    SHOWN images evenly spread over the split.
    Options: `class_names` (as zeroshot's), `max_new_tokens`."""

    needs = ("image_features", "caption_logits", "head")

    def __init__(self, run_setup, spec, data_dir):
        super().__init__(run_setup, spec, data_dir)
        task_spec = run_setup.task.batch_spec()
        self.batch_spec = {"image": task_spec["image"], "text": task_spec["text"]}
        self.class_names = None
        if "label" in self.dataset.features and (self.dataset.class_names or self.spec.get("class_names")):
            self.class_names = prompts.class_names(self.spec.get("class_names"), self.dataset.class_names,
                                                   self.spec["dataset"])
            self.batch_spec["label"] = jax.ShapeDtypeStruct((), np.int32)
        tok, length = run_setup.tokenizer, run_setup.config.model.text.context_length
        self.eos, self.bos, self.pad = end_id(tok), tok.bos_id, tok.pad_id
        self.max_new_tokens = int(self.spec.get("max_new_tokens", length - 1))

    def _predict(self, params, batch, index):
        image_tokens = self.apply(params, (batch["image"],), "image_features")[1]
        tokens = batch["text"]
        logits = self.apply(params, (image_tokens, tokens), "caption_logits")[:, :-1].astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)[..., 0]
        out = {"nll": nll, "weights": target_weights(tokens, self.eos, packed=False)}
        if self.class_names is not None:
            b = tokens.shape[0]
            out["greedy"] = gen.sample(self.setup.model, params, jnp.full((b, 1), self.bos, jnp.int32),
                                       jnp.ones(b, jnp.int32), jax.random.PRNGKey(0),
                                       max_new_tokens=self.max_new_tokens, eos_id=self.eos,
                                       pad_id=self.pad, temperature=0.0, context=image_tokens)
            out["label"] = batch["label"]
        return out

    def run(self, params):
        out = self.map_split(self._predict, params, self.batch_spec)
        w = out["weights"]
        metrics = {"perplexity": float(np.exp(np.sum(np.float64(out["nll"]) * w) / max(w.sum(), 1))),
                   "tokens": int(w.sum())}
        if self.class_names is None:
            return metrics
        tok = self.setup.tokenizer
        captions = [tok.decode(gen.until_end(row, self.eos)) for row in out["greedy"]]
        hits = [names_right_class(c, label, self.class_names) for c, label in zip(captions, out["label"])]
        shown = np.unique(np.linspace(0, len(captions) - 1, SHOWN).astype(int))
        return metrics | {"named_class": float(np.mean(hits))} | {
            f"caption_{i}": f"{self.class_names[int(out['label'][j])]} → {captions[j]}"
            for i, j in enumerate(shown)}
