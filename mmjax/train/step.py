"""The jitted train step: loss terms of the task, (accumulated) gradients, optax update."""

import functools

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.losses import global_contrastive_loss, mlm_loss
from mmjax.masking import bert_mask
from mmjax.sharding import BATCH_AXES, batch_sharding


def make_loss_terms(config, model, mesh, tokenizer):
    """(embed, contrastive, mlm) functions for `config.task`; unused ones are None.

    embed(params, batch) -> (zimg, ztxt, scale, bias); contrastive(zimg, ztxt, scale, bias)
    -> loss over the GLOBAL batch; mlm(params, batch, rng) -> (loss, metrics) on masked text.
    """
    embed = contrastive = mlm = None
    if config.task in ("clip", "clip+mlm"):
        def embed(params, batch):
            return model.apply({"params": params}, batch["image"], batch["text"])

        contrastive = functools.partial(global_contrastive_loss, config.model.contrastive_loss,
                                        mesh=mesh, batch_axes=BATCH_AXES)
    if config.task in ("mlm", "clip+mlm"):
        c = config.model.mlm
        mask = functools.partial(bert_mask, vocab_size=tokenizer.vocab_size,
                                 mask_id=tokenizer.mask_id, special_ids=tuple(tokenizer.special_ids),
                                 max_predictions=c.max_predictions, mask_rate=c.mask_rate)
        text_key, method = ("tokens", None) if config.task == "mlm" else ("text", "mlm_logits")

        def mlm(params, batch, rng):
            masked = mask(rng, batch[text_key])
            logits = model.apply({"params": params}, masked["inputs"], masked["positions"],
                                 method=method)
            return mlm_loss(logits, masked["labels"], masked["weights"])
    return embed, contrastive, mlm


def make_loss_fn(config, model, mesh, tokenizer):
    """(params, batch, rng) -> (total loss, metrics) for one (micro)batch."""
    embed, contrastive, mlm = make_loss_terms(config, model, mesh, tokenizer)
    mlm_weight = config.model.mlm.weight if config.task == "clip+mlm" else 1.0

    def loss_fn(params, batch, rng):
        loss, metrics = 0.0, {}
        if embed:
            zimg, ztxt, scale, bias = embed(params, batch)
            loss = contrastive(zimg, ztxt, scale, bias)
            metrics.update(contrastive_loss=loss, logit_scale=scale)
        if mlm:
            term, mlm_metrics = mlm(params, batch, rng)
            loss = loss + mlm_weight * term
            metrics.update(mlm_loss=term, **mlm_metrics)
        return loss, metrics

    return loss_fn


def make_accumulated_grads(config, model, mesh, tokenizer, k):
    """Gradients of a batch split into k microbatches, with exact contrastive negatives.

    Contrastive term (gradient caching): embed every microbatch without keeping activations,
    take the loss over ALL k*b embeddings and its gradient w.r.t. them, then re-run each
    microbatch and pull that embedding gradient back to the params with a VJP. So the loss
    sees the whole accumulated batch as negatives, at the cost of a second forward pass.
    MLM term: the mean of the microbatch gradients.
    """
    embed, contrastive, mlm = make_loss_terms(config, model, mesh, tokenizer)
    mlm_weight = config.model.mlm.weight if config.task == "clip+mlm" else 1.0
    # '(b k)': microbatch i takes every k-th example, so each keeps the batch sharding.
    split = functools.partial(einops.rearrange, pattern="(b k) ... -> k b ...", k=k)
    merge = functools.partial(einops.rearrange, pattern="k b ... -> (b k) ...")

    def grads_fn(params, batch, rng):
        micro = jax.tree.map(split, batch)
        zeros = jax.tree.map(jnp.zeros_like, params)
        loss, metrics, cotangents = 0.0, {}, None
        if embed:
            zimg, ztxt, scale, bias = jax.lax.map(lambda mb: embed(params, mb), micro)
            loss, (g_img, g_txt, g_scale, g_bias) = jax.value_and_grad(contrastive, argnums=(0, 1, 2, 3))(
                merge(zimg), merge(ztxt), scale[0], bias[0])
            first = jnp.arange(k) == 0  # the scale/bias cotangent is pulled back once
            cotangents = (split(g_img), split(g_txt), g_scale * first, g_bias * first)
            metrics.update(contrastive_loss=loss, logit_scale=scale[0])

        def body(acc, xs):
            mb, i, cot = xs
            grads, mlm_loss_i, mlm_metrics = zeros, 0.0, {}
            if embed:
                _, pullback = jax.vjp(lambda p: embed(p, mb), params)
                (grads,) = pullback(cot)
            if mlm:
                (mlm_loss_i, mlm_metrics), g = jax.value_and_grad(mlm, has_aux=True)(
                    params, mb, jax.random.fold_in(rng, i))
                grads = jax.tree.map(lambda a, b: a + mlm_weight * b / k, grads, g)
            return jax.tree.map(jnp.add, acc, grads), (mlm_loss_i, mlm_metrics)

        grads, (mlm_losses, mlm_metrics) = jax.lax.scan(body, zeros, (micro, jnp.arange(k), cotangents))
        if mlm:
            loss = loss + mlm_weight * mlm_losses.mean()
            metrics.update(mlm_loss=mlm_losses.mean(), **jax.tree.map(jnp.mean, mlm_metrics))
        return (loss, metrics), grads

    return grads_fn


def make_train_step(config, model, tx, lr_schedule, mesh, rule_table, tokenizer, state_shardings):
    """Returns the jitted `train_step(state, batch) -> (state, metrics)` (state donated)."""
    k = config.train.grad_accum_steps
    if k == 1:
        grads_fn = jax.value_and_grad(make_loss_fn(config, model, mesh, tokenizer), has_aux=True)
    else:
        grads_fn = make_accumulated_grads(config, model, mesh, tokenizer, k)

    def train_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = grads_fn(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_schedule(state.step))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding(mesh)),
                     out_shardings=(state_shardings, None), donate_argnums=0)
    return Traced(jitted, mesh, rule_table)


class Traced:
    """A jitted function traced under the mesh and logical-rules context it needs.

    `compile(*abstract_args)` lowers ahead of time (memory analysis before step 1)."""

    def __init__(self, jitted, mesh, rule_table):
        self.jitted, self.mesh, self.rule_table = jitted, mesh, rule_table
        self.compiled = None

    def compile(self, *args):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rule_table):
            self.compiled = self.jitted.lower(*args).compile()
        return self.compiled

    def __call__(self, *args):
        if self.compiled is None:
            self.compile(*args)
        return self.compiled(*args)
