"""BERT 80/10/10 token masking as a pure, jittable function of (rng, tokens)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _is_special(tokens, special_ids):
    """Boolean [...] mask: tokens that are one of the (static) special ids."""
    special = jnp.zeros(tokens.shape, bool)
    for s in special_ids:
        special |= tokens == s
    return special


def _random_regular_tokens(rng, shape, *, vocab_size: int, special_ids):
    """Uniform token ids in [0, vocab_size) that are not special ids, int32 [shape].

    Draws r in [0, vocab_size - #specials) and shifts it past each special id in
    ascending order, which maps the range one-to-one onto the regular ids.
    """
    specials = sorted({int(s) for s in special_ids if 0 <= int(s) < vocab_size})
    num_regular = vocab_size - len(specials)
    if num_regular <= 0:
        raise ValueError('Every vocabulary id is special: nothing to sample from.')
    t = jax.random.randint(rng, shape, 0, num_regular, dtype=jnp.int32)
    for s in specials:
        t = t + (t >= s).astype(jnp.int32)
    return t


def bert_mask(rng, tokens, *, vocab_size: int, mask_id: int, special_ids: tuple[int, ...],
              max_predictions: int, mask_rate: float = 0.15, random_rate: float = 0.1,
              keep_rate: float = 0.1):
    """Chooses MLM prediction positions and corrupts them the BERT way.

    Per sequence, n = min(max_predictions, max(1, round(mask_rate * C))) positions
    (0 if C == 0) are drawn uniformly without replacement among the C candidate
    positions (token not in special_ids; padding id 0 must be listed there). Of the
    chosen, a fraction 1 - random_rate - keep_rate becomes mask_id, random_rate a
    uniformly random non-special id, keep_rate stays unchanged. Shapes are static,
    so `jax.jit(bert_mask, static_argnames=(...all keyword args...))` works.

    Args:
      rng: PRNG key.
      tokens: int [b, L] token ids.

    Returns:
      dict with
        inputs:    int32 [b, L] corrupted tokens,
        positions: int32 [b, M] chosen positions in ascending order, padded with 0,
        labels:    int32 [b, M] original tokens at positions, 0 in padding slots,
        weights:   float32 [b, M] 1 for real predictions, 0 for padding slots,
      with M = max_predictions.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    b, length = tokens.shape
    m = max_predictions
    k_choose, k_action, k_random = jax.random.split(rng, 3)

    # How many to predict in each sequence.
    candidate = ~_is_special(tokens, special_ids)                              # [b, L]
    num_cand = candidate.sum(-1)                                               # [b]
    n = jnp.clip(jnp.round(mask_rate * num_cand).astype(jnp.int32), 1, m)
    n = jnp.where(num_cand > 0, n, 0)                                          # [b]

    # Uniform choice without replacement: top-k of random scores over candidates.
    k = min(m, length)
    scores = jnp.where(candidate, jax.random.uniform(k_choose, (b, length)), -jnp.inf)
    _, top = jax.lax.top_k(scores, k)                                          # [b, k]
    if k < m:
        top = jnp.pad(top, ((0, 0), (0, m - k)))
    valid = jnp.arange(m)[None, :] < n[:, None]                                # [b, M]
    # Sort the chosen positions ascending; padding slots (sentinel L) go last.
    positions = jnp.sort(jnp.where(valid, top, length), axis=-1)
    positions = jnp.where(valid, positions, 0).astype(jnp.int32)

    # 80 / 10 / 10: mask / random regular token / keep.
    labels = jnp.where(valid, jnp.take_along_axis(tokens, positions, axis=-1), 0)
    u = jax.random.uniform(k_action, (b, m))
    random_tokens = _random_regular_tokens(
        k_random, (b, m), vocab_size=vocab_size, special_ids=special_ids)
    new = jnp.where(u < 1.0 - random_rate - keep_rate, mask_id,
                    jnp.where(u < 1.0 - keep_rate, random_tokens, labels))      # [b, M]

    # Scatter into the sequence; padding slots point out of bounds and are dropped.
    rows = jnp.arange(b)[:, None]
    scatter_at = jnp.where(valid, positions, length)
    inputs = tokens.at[rows, scatter_at].set(new.astype(jnp.int32), mode='drop')

    return {
        'inputs': inputs,
        'positions': positions,
        'labels': labels.astype(jnp.int32),
        'weights': valid.astype(jnp.float32),
    }


def gather_positions(x, positions):
    """Gathers per-sequence positions: x [b, L, ...] and positions [b, M] -> [b, M, ...]."""
    idx = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx.astype(jnp.int32), axis=1)
