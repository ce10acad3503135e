"""CLIP + image-text matching (+ image-conditioned MLM) through a fusion encoder (ALBEF / BLIP).

loss = contrastive + `model.itm.weight` × ITM (+ `model.mlm.weight` × MLM), each logged:

- ITM: for each image one hard negative text and for each text one hard negative image,
  drawn from the whole (micro)batch ∝ softmax of the contrastive logits (mmjax/negatives.py),
  never the positive nor a false negative (same caption, or same label with
  `model.itm.labels`); a 2-way head on the fused first token; cross-entropy over the 3B pairs
  (B positives, 2B negatives). `model.itm.negatives` = k > 1 draws k of each, independently,
  and weighs each 1/k: the same loss in expectation, over (1 + 2k)B pairs. The draw is seeded
  by the step's rng, so a resumed run draws the same. An ExampleTerm: under jit its batch is
  the global one (the draw reaches every host's examples, GSPMD gathers them); with `train.grad_accum_steps` = k it is each
  microbatch (B/k candidates), as BLIP's negatives come from the GPUs' current batch.
- MLM: the 80/10/10 masking of tasks/mlm.py on the caption, predicted through the fused pass
  with the pair's image tokens, by the MLM head tied to the token table.

The fusion encoder is `ENCODERS[model.fusion kind, layout]` (BLIP's, ALBEF's, the single
stream's): every one serves the same methods, so the terms and evaluators never ask which.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import flops
from mmjax.losses import mlm_loss
from mmjax.negatives import false_negatives, hard_negatives
from mmjax.nn import options
from mmjax.nn.fusion import FusedDualEncoder
from mmjax.nn.fusion_albef import AlbefDualEncoder
from mmjax.nn.fusion_concat import ConcatDualEncoder
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT
from mmjax.tasks import TASKS
from mmjax.tasks.base import ExampleTerm
from mmjax.tasks.clip import Clip
from mmjax.tasks.mlm import masker, mlm_head

_ITM_STREAM = 0x17E   # folded into the step's rng: the draws do not reuse the MLM mask's bits


def itm_loss(logits, valid_text, valid_image):
    """Cross-entropy of logits [(1 + 2k)B, 2] (B positives, kB images with negative texts, kB
    texts with negative images) with targets (1, 0, 0); a negative weighs valid / k (valid
    [kB], False: weighed out), so k draws average the negative terms.
    -> (loss, {'itm_accuracy'})."""
    kb = valid_text.shape[0]
    b = logits.shape[0] - 2 * kb
    targets = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * kb, jnp.int32)])
    weights = jnp.concatenate([jnp.ones(b, jnp.float32),
                               jnp.concatenate([valid_text, valid_image]).astype(jnp.float32) * b / kb])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    denom = jnp.maximum(weights.sum(), 1.0)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    return (weights * ce).sum() / denom, {"itm_accuracy": (weights * correct).sum() / denom}


def itm_pairs(rng, zimg, ztxt, scale, texts, labels=None):
    """The hard negatives of a batch: (negative text of each image [B], negative image of each
    text [B], valid_text [B], valid_image [B]) from the embeddings zimg, ztxt [B, d]."""
    logits = scale * jnp.einsum("id,jd->ij", zimg, ztxt)
    return hard_negatives(rng, logits, false_negatives(texts, labels))


def itm_term(config, model, weight):
    labels, k = config.model.itm.labels, config.model.itm.get("negatives", 1)

    def fn(params, batch, rng):
        variables = {"params": params}
        zimg, image_tokens = model.apply(variables, batch["image"], method="image_features")
        ztxt = model.apply(variables, batch["text"], method="encode_text")
        scale = model.apply(variables, method="scale")
        pairs = lambda key: itm_pairs(
            key, jax.lax.stop_gradient(zimg), jax.lax.stop_gradient(ztxt),
            jax.lax.stop_gradient(scale), batch["text"], batch["label"] if labels else None)
        key = jax.random.fold_in(rng, _ITM_STREAM)
        # [k, B] each (k = 1: the key itself, so the draw is the one of runs before this option)
        drawn = [a[None] for a in pairs(key)] if k == 1 else jax.vmap(pairs)(jax.random.split(key, k))
        neg_text, neg_image, ok_text, ok_image = (a.reshape(-1) for a in drawn)   # [kB], k-major
        context = jnp.concatenate([image_tokens] * (k + 1) + [image_tokens[neg_image]])
        texts = jnp.concatenate([batch["text"], batch["text"][neg_text]] + [batch["text"]] * k)
        logits = model.apply(variables, context, texts, method="itm_logits")   # [(1 + 2k)B, 2]
        return itm_loss(logits, ok_text, ok_image)

    return ExampleTerm(fn, weight)


def fused_mlm_term(config, tokenizer, model, weight):
    mask = masker(config, tokenizer)

    def fn(params, batch, rng):
        variables = {"params": params}
        masked = mask(rng, batch["text"])
        image_tokens = model.apply(variables, batch["image"], method="image_features")[1]
        logits = model.apply(variables, image_tokens, masked["inputs"], masked["positions"],
                             method="fused_mlm_logits")
        return mlm_loss(logits, masked["labels"], masked["weights"])

    return ExampleTerm(fn, weight)


def fused_text_forward(b, rows, text, n_img, img_width, selected=None, depth=None):
    """Forward FLOPs of the text tower (or `depth` blocks like its own) on b pairs with
    cross-attention to n_img image tokens in every layer (the last layer's queries at
    `selected` rows when given)."""
    w, last, depth = text.width, rows if selected is None else selected, depth or text.depth
    cross = lambda r: 2 * b * r * 2 * w * w + 2 * b * n_img * 2 * img_width * w + 4 * b * r * n_img * w
    return (flops.encoder_forward(b, rows, w, text.mlp_dim, depth, selected)
            + (depth - 1) * cross(rows) + cross(last))


def blip_forward(b, m, n_img, selected=None):
    """Forward FLOPs of BLIP's fused pass on b pairs (config.model `m`): the text tower with
    cross-attention in every layer."""
    return fused_text_forward(b, m.text.context_length, m.text, n_img, m.image.width, selected)


def albef_forward(b, m, n_img, selected=None):
    """ALBEF's: the whole text tower, then the fusion stack (cross-attention in every layer)."""
    t, rows = m.text, m.text.context_length
    return (flops.encoder_forward(b, rows, t.width, t.mlp_dim, t.depth)
            + fused_text_forward(b, rows, t, n_img, m.image.width, selected, fusion_depth(m)))


def concat_forward(b, m, n_img, selected=None):
    """The single stream's: the image tokens' projection, the stack over n_img + l rows."""
    t = m.text
    return 2 * b * n_img * m.image.width * t.width + flops.encoder_forward(
        b, n_img + t.context_length, t.width, t.mlp_dim, fusion_depth(m), selected)


# (model.fusion.kind, layout) -> (the fused model, forward FLOPs of its fused pass); 'concat'
# has one layout, whatever `layout` says.
ENCODERS = {("cross", "blip"): (FusedDualEncoder, blip_forward),
            ("cross", "albef"): (AlbefDualEncoder, albef_forward),
            ("concat", None): (ConcatDualEncoder, concat_forward)}


def encoder_entry(model_config):
    f = model_config.fusion
    key = (f.kind, None if f.kind == "concat" else f.layout)
    if key not in ENCODERS:
        raise ValueError(f"model.fusion kind={f.kind!r} layout={f.layout!r} unknown; valid: "
                         f"kind 'cross' with layout 'blip' or 'albef', or kind 'concat'")
    return ENCODERS[key]


def fusion_depth(model_config):
    """The fusion stack's depth: model.fusion.depth, 0 meaning model.text.depth."""
    return model_config.fusion.get("depth", 0) or model_config.text.depth


def itm_train_flops(b, m, image_size, prune=True):
    """The ITM term: the ViT at every row (3x), the text tower pooled without gradients (1x),
    the fused pass on (1 + 2k)b pairs (k = model.itm.negatives), read at the first token (3x)."""
    image, text = m.image, m.text
    n_img = (image_size // image.patch_size) ** 2 + (image.pool == "cls")
    vit = flops.encoder_forward(b, n_img, image.width, image.mlp_dim, image.depth)
    pooled = flops.encoder_forward(b, text.context_length, text.width, text.mlp_dim, text.depth,
                                   flops.text_pooled_rows(text, prune))
    fused = encoder_entry(m)[1]((1 + 2 * m.itm.get("negatives", 1)) * b, m, n_img, 1 if prune else None)
    return 3 * vit + pooled + 3 * fused


@TASKS.register("clip+itm")
class ClipItm(Clip):
    """The dual encoder's contrastive loss + ITM on hard negatives through the fusion encoder
    `model.fusion` names (`ENCODERS`)."""

    with_mlm = False

    def build_model(self):
        m = self.config.model
        text = options.from_config(m, "text", self.tokenizer)
        stack = options.EncoderOptions(**{f.name: getattr(text, f.name)
                                          for f in dataclasses.fields(options.EncoderOptions)})
        return encoder_entry(m)[0](ViT(options.from_config(m, "image")), TextTransformer(text),
                                   m.embed_dim, init_logit_bias=m.get("init_logit_bias"),
                                   mlm_head=mlm_head(m) if self.with_mlm else None,
                                   param_dtype=np.dtype(m.param_dtype),
                                   fusion_opts=stack.replace(depth=fusion_depth(m), causal=False))

    def batch_spec(self):
        spec = super().batch_spec()
        if self.config.model.itm.labels:
            spec["label"] = jax.ShapeDtypeStruct((), np.int32)
        return spec

    def init_args(self, batch_size=1):
        batch = self.example_batch(batch_size)
        positions = np.zeros((batch_size, self.config.model.mlm.max_predictions), np.int32)
        return "init_all", (batch["image"], batch["text"], positions)

    def loss_terms(self, model, mesh):
        return super().loss_terms(model, mesh) | {
            "itm": itm_term(self.config, model, self.config.model.itm.weight)}

    def default_evals(self):
        dataset = self.train_datasets()[0]
        return super().default_evals() | {"itm": dict(type="itm", dataset=dataset)}

    def train_flops(self):
        """CLIP's, plus the ITM term (mmjax/flops.py's conventions: a backward is 2 forwards)."""
        m, d = self.config.model, self.config.data
        return super().train_flops() + itm_train_flops(
            self.config.train.batch_size, m, d.image_size, flops.prunes(m))


@TASKS.register("clip+itm+mlm")
class ClipItmMlm(ClipItm):
    """clip+itm, plus `model.mlm.weight` × MLM of the caption predicted through the fused pass."""

    with_mlm = True

    def loss_terms(self, model, mesh):
        return super().loss_terms(model, mesh) | {
            "mlm": fused_mlm_term(self.config, self.tokenizer, model, self.config.model.mlm.weight)}

    def train_flops(self):
        """clip+itm's, plus the ViT again, the fused text tower on the masked captions and the
        MLM head (3x)."""
        m, d = self.config.model, self.config.data
        b = self.config.train.batch_size
        n_img = (d.image_size // m.image.patch_size) ** 2 + (m.image.pool == "cls")
        rows = m.mlm.max_predictions if flops.prunes(m) else None
        return super().train_flops() + 3 * (
            flops.encoder_forward(b, n_img, m.image.width, m.image.mlp_dim, m.image.depth)
            + encoder_entry(m)[1](b, m, n_img, rows)
            + flops.mlm_head_forward(b, m.text, m.mlm.max_predictions))
