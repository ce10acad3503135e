"""Sampling from a causal LM with a key-value cache: greedy, temperature, top-k and top-p (nucleus).

    tokens = sample(model, params, prompts, lengths, key, max_new_tokens=32, eos_id=3,
                    temperature=0.8, top_k=40, top_p=0.95)

Prompts are RIGHT-padded, prompts [b, P] int32 with lengths [b] (each row's first `length`
tokens are its prompt, the start token included): every token then sits at its own
position, so learned, sinusoidal and rotary positions are exact without position offsets,
and a row's padding is never attended to (causal attention, and the padding's cache rows
are overwritten by the row's own tokens before it reaches them). The prompts are prefilled
in one forward pass (nn.decode), then one token a step inside `lax.while_loop`, each row at
its own position, until every row has produced `eos_id` or `max_new_tokens` tokens.

The result is [b, max_new_tokens] int32: each row's new tokens up to and including its
first `eos_id`, then `pad_id`. Token t of row r is drawn with the key
`fold_in(fold_in(key, t), r)`: a prompt's continuation does not depend on the prompts
beside it (on its row index only). temperature 0 is greedy (argmax); top_k 0 and top_p 1
filter nothing. Filters apply in transformers' order: temperature, top-k, top-p. The
temperature and filters are traced (one compile serves every setting).

Sharded: call it under the run's mesh and logical axis rules (`jax.set_mesh(mesh)`,
`nn.logical_axis_rules(rules)`; `on_mesh` does both) with the prompts split over the batch
axes (data x fsdp): the cache is [layers, b, L, heads, head_dim], its batch split like the
prompts' and its heads over tensor, as training splits the activations.

`generate_text` is the string-to-string form (the run's tokenizer), used by
`mmjax.load(W).generate`, `mmjax sample` and the `samples` evaluator.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.nn import decode


def filter_logits(logits, temperature, top_k, top_p):
    """logits [b, V] -> logits / temperature with the tokens outside the top_k largest
    (ties at the k-th kept) and outside the nucleus set to -inf. The nucleus: the most
    probable tokens whose probabilities, before each, sum to less than top_p (at least one
    token). top_k 0: no top-k; top_p 1: no top-p; temperature 0 is taken as 1 (greedy
    takes the argmax of the raw logits)."""
    logits = logits.astype(jnp.float32)
    logits = logits / jnp.where(temperature > 0, temperature, 1.0)
    vocab = logits.shape[-1]
    ordered = -jnp.sort(-logits, axis=-1)                                      # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(ordered, jnp.broadcast_to(k - 1, logits.shape[:-1])[..., None], -1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
    ordered = jnp.where(ordered < kth, -jnp.inf, ordered)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs                                # mass ahead of each
    kept = jnp.where(before < top_p, ordered, jnp.inf)                          # the nucleus
    cutoff = jnp.min(kept, axis=-1, keepdims=True)                              # its smallest logit
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def next_tokens(logits, key, temperature, top_k, top_p):
    """One token per row of logits [b, V]: argmax when temperature is 0, else a draw from the
    filtered distribution with row r's key fold_in(key, r)."""
    filtered = filter_logits(logits, temperature, top_k, top_p)
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(logits.shape[0]))
    drawn = jax.vmap(jax.random.categorical)(keys, filtered)
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def sample(model, params, prompts, lengths, key, *, max_new_tokens: int, eos_id: int | None,
           pad_id: int = 0, temperature=1.0, top_k=0, top_p=1.0, context=None):
    """New tokens [b, max_new_tokens] of the right-padded prompts [b, P] (lengths [b]); see
    the module docstring. eos_id None: never stops early. Jit it with `sampler`.
    `context`: image tokens [b, n, c] a captioner's blocks cross-attend to (projected once)."""
    b, prompt_rows = prompts.shape
    if context is not None:
        context = decode.project_context(model, params, context)
    lengths = jnp.asarray(lengths, jnp.int32)
    temperature, top_p = jnp.float32(temperature), jnp.float32(top_p)
    top_k = jnp.int32(top_k)
    cache = decode.init_cache(model, b, prompt_rows + max_new_tokens - 1)
    hidden, cache = decode.forward(model, params, prompts, jnp.zeros(b, jnp.int32), cache, context)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]   # [b, width]
    first = next_tokens(decode.logits(model, params, last), jax.random.fold_in(key, 0),
                        temperature, top_k, top_p)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = jnp.zeros(b, bool) if eos_id is None else first == eos_id

    def more(state):
        t, _, done, _ = state
        return (t < max_new_tokens) & ~jnp.all(done)

    def step(state):   # token t - 1 goes in at row length + t - 1; token t comes out
        t, out, done, cache = state
        previous = jax.lax.dynamic_slice_in_dim(out, t - 1, 1, axis=1)              # [b, 1]
        hidden, cache = decode.forward(model, params, previous, lengths + t - 1, cache, context)
        token = next_tokens(decode.logits(model, params, hidden[:, 0]), jax.random.fold_in(key, t),
                            temperature, top_k, top_p)
        token = jnp.where(done, pad_id, token)
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], t, axis=1)
        if eos_id is not None:
            done = done | (token == eos_id)
        return t + 1, out, done, cache

    _, out, _, _ = jax.lax.while_loop(more, step, (jnp.int32(1), out, done, cache))
    return out


def sampler(model, max_new_tokens: int, eos_id: int | None, pad_id: int = 0, out_sharding=None):
    """`sample` jitted for `model`: fn(params, prompts, lengths, key, temperature, top_k,
    top_p, context=None) -> tokens [b, max_new_tokens] (one compile per prompt shape).
    `context`: what each decoding step also attends to (a captioner's image tokens
    [b, n_img, c], see `sample`); None for a causal LM."""
    def fn(params, prompts, lengths, key, temperature, top_k, top_p, context=None):
        return sample(model, params, prompts, lengths, key, max_new_tokens=max_new_tokens,
                      eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_k=top_k,
                      top_p=top_p, context=context)
    return jax.jit(fn, out_shardings=out_sharding)


@contextlib.contextmanager
def on_mesh(mesh, rules):
    """The run's mesh and logical axis rules in force (nothing when mesh is None)."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def prompt_rows(tokenizer, texts, max_new_tokens: int, max_length: int | None, multiple: int = 1):
    """(prompts [b, P] int32 right-padded with pad_id, lengths [b]): the start token then each
    text's ids; P rounded up to a multiple of 8 (fewer compiles), b to `multiple` (rows that
    repeat the last). ValueError when a prompt and its new tokens exceed `max_length`."""
    rows = [[tokenizer.bos_id, *ids] for ids in tokenizer.ids(list(texts))]
    longest = max(len(r) for r in rows)
    if max_length is not None and longest + max_new_tokens - 1 > max_length:
        raise ValueError(f"a prompt of {longest} tokens (start token included) and max_new_tokens="
                         f"{max_new_tokens} need {longest + max_new_tokens - 1} positions, more than "
                         f"the model's context_length={max_length}: shorten the prompt or lower "
                         f"max_new_tokens")
    width = -(-longest // 8) * 8
    if max_length is not None:
        width = max(longest, min(width, max_length - max_new_tokens + 1))
    rows += [rows[-1]] * (-len(rows) % multiple)
    prompts = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    for i, r in enumerate(rows):
        prompts[i, :len(r)] = r
    return prompts, np.array([len(r) for r in rows], np.int32)


def generate_text(model, params, tokenizer, texts, *, max_new_tokens=32, temperature=1.0, top_k=0,
                  top_p=1.0, seed=0, eos_id=None, max_length=None, mesh=None, rules=(),
                  cache=None, context=None):
    """The continuation (a string) of each text in `texts`, sampled from `model` (a CausalLM,
    or a captioner with `context`: image tokens [len(texts), n, c]) with the tokenizer's ids;
    eos_id: the end-of-text id (default the tokenizer's eos_id); max_length: the model's
    context length; mesh, rules: the run's (prompts split over the batch axes). `cache`: a
    dict that keeps the compiled samplers between calls."""
    if not len(texts):
        return []
    if max_new_tokens < 1 or temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}, temperature={temperature}, top_k="
                         f"{top_k}, top_p={top_p}: need max_new_tokens >= 1, temperature >= 0 (0: "
                         f"greedy), top_k >= 0 (0: off) and 0 < top_p <= 1 (1: off)")
    eos = tokenizer.eos_id if eos_id is None else eos_id
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    prompts, lengths = prompt_rows(tokenizer, texts, max_new_tokens, max_length, shards)
    inputs = [prompts, lengths]
    if context is not None:   # rows added for the mesh repeat the last, as the prompts' do
        context = np.asarray(context)
        inputs.append(np.concatenate([context, np.repeat(context[-1:], len(prompts) - len(context), 0)]))
    cache = {} if cache is None else cache
    key = (max_new_tokens, eos, mesh)
    if key not in cache:
        out = None if mesh is None else NamedSharding(mesh, P())
        cache[key] = sampler(model, max_new_tokens, eos, tokenizer.pad_id, out)
    with on_mesh(mesh, rules):
        if mesh is not None:
            inputs = [jax.make_array_from_callback(x.shape, sharding.batch_sharding(mesh),
                                                   lambda index, x=x: x[index])
                      for x in inputs]   # every process holds them whole
        prompts, lengths, *context = inputs
        tokens = cache[key](params, prompts, lengths, jax.random.PRNGKey(seed), temperature, top_k, top_p,
                            *context)
    tokens = np.asarray(jax.device_get(tokens))[:len(texts)]
    return [tokenizer.decode(until_end(row, eos)) for row in tokens]


def until_end(row, eos_id):
    """A row's ids before its first eos_id."""
    ends = np.flatnonzero(row == eos_id)
    return row[:ends[0]] if len(ends) else row
