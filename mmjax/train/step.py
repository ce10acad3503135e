"""The jitted train step: the task's loss terms summed with their weights, (accumulated)
gradients, an optax update that is skipped when the gradients are not finite."""

import dataclasses
import functools

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.param_groups import stop_frozen
from mmjax.sharding import batch_sharding
from mmjax.tasks.base import BatchTerm


def make_loss_fn(terms):
    """(params, batch, rng) -> (weighted sum of the terms, metrics) for one (micro)batch."""

    def loss_fn(params, batch, rng):
        total, metrics = 0.0, {}
        for name, term in terms.items():
            if isinstance(term, BatchTerm):
                value, aux = term.loss(*term.embed(params, batch))
            else:
                value, aux = term.fn(params, batch, rng)
            total = total + term.weight * value
            metrics.update({f"{name}_loss": value, **aux})
        return total, metrics

    return loss_fn


def make_accumulated_grads(terms, k):
    """Gradients of a batch split into k microbatches, with exact contrastive negatives.

    BatchTerms (gradient caching): embed every microbatch without keeping activations, take
    the loss over ALL k*b embeddings and its gradient w.r.t. them, then re-run each
    microbatch and pull that embedding gradient back to the params with a VJP. So the loss
    sees the whole accumulated batch as negatives, at the cost of a second forward pass.
    ExampleTerms: the mean of the microbatch gradients.
    """
    batch_terms = {n: t for n, t in terms.items() if isinstance(t, BatchTerm)}
    example_terms = {n: t for n, t in terms.items() if not isinstance(t, BatchTerm)}
    # '(b k)': microbatch i takes every k-th example, so each keeps the batch sharding.
    split = functools.partial(einops.rearrange, pattern="(b k) ... -> k b ...", k=k)
    merge = functools.partial(einops.rearrange, pattern="k b ... -> (b k) ...")
    first = jnp.arange(k) == 0  # a shared value's cotangent is pulled back once

    def grads_fn(params, batch, rng):
        micro = jax.tree.map(split, batch)
        zeros = jax.tree.map(jnp.zeros_like, params)
        total, metrics, cotangents = 0.0, {}, {}
        for name, term in batch_terms.items():
            per_example, shared = jax.lax.map(lambda mb, t=term: t.embed(params, mb), micro)
            per_example, shared = jax.tree.map(merge, per_example), jax.tree.map(lambda x: x[0], shared)
            (value, aux), (g_examples, g_shared) = jax.value_and_grad(
                term.loss, argnums=(0, 1), has_aux=True)(per_example, shared)
            cotangents[name] = jax.tree.map(lambda g: term.weight * split(g), g_examples), jax.tree.map(
                lambda g: term.weight * g * first.reshape((k,) + (1,) * g.ndim), g_shared)
            total = total + term.weight * value
            metrics.update({f"{name}_loss": value, **aux})

        def body(acc, xs):
            mb, i, cots = xs
            grads, out = acc, {}
            for name, term in batch_terms.items():
                _, pullback = jax.vjp(lambda p, t=term: t.embed(p, mb), params)
                grads = jax.tree.map(jnp.add, grads, pullback(cots[name])[0])
            for name, term in example_terms.items():
                (value, aux), g = jax.value_and_grad(term.fn, has_aux=True)(
                    params, mb, jax.random.fold_in(rng, i))
                grads = jax.tree.map(lambda a, b, w=term.weight: a + w * b / k, grads, g)
                out[name] = (value, aux)
            return grads, out

        grads, outs = jax.lax.scan(body, zeros, (micro, jnp.arange(k), cotangents))
        for name, (values, aux) in outs.items():
            total = total + example_terms[name].weight * values.mean()
            metrics.update({f"{name}_loss": values.mean(), **jax.tree.map(jnp.mean, aux)})
        return (total, metrics), grads

    return grads_fn


def without_frozen_gradients(term, patterns):
    """The term with its params' frozen leaves behind a stop_gradient (no backward for them)."""
    if isinstance(term, BatchTerm):
        return dataclasses.replace(term, embed=lambda p, b: term.embed(stop_frozen(p, patterns), b))
    return dataclasses.replace(term, fn=lambda p, b, r: term.fn(stop_frozen(p, patterns), b, r))


def make_train_step(task, model, tx, lr_schedule, mesh, rule_table, state_shardings):
    """Returns the jitted `train_step(state, batch) -> (state, metrics)` (state donated).

    Non-finite gradients skip the update (`optim.skip_nonfinite` wraps the optimizer in
    `optax.apply_if_finite`); metrics carry `skipped_steps`, the current run of them."""
    terms = task.loss_terms(model, mesh)
    frozen = tuple(task.config.optim.get("frozen", ()))
    if frozen:
        terms = {name: without_frozen_gradients(term, frozen) for name, term in terms.items()}
    k = task.config.train.grad_accum_steps
    if k == 1:
        grads_fn = jax.value_and_grad(make_loss_fn(terms), has_aux=True)
    else:
        grads_fn = make_accumulated_grads(terms, k)

    def train_step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = grads_fn(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_schedule(state.step))
        if isinstance(opt_state, optax.ApplyIfFiniteState):
            metrics["skipped_steps"] = opt_state.notfinite_count
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
