"""Contrastive (CLIP InfoNCE, SigLIP sigmoid) and masked-LM losses, global and sharded."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.sharding import Mesh, PartitionSpec as P

AxisName = str | tuple[str, ...]

CONTRASTIVE_KINDS = ('infonce', 'sigmoid')


def _f32(*xs):
    """Casts arrays (or scalars) to float32: every loss is computed in float32."""
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def _pair_logits(za, zb, scale):
    """Scaled similarities: za [m, D], zb [n, D] -> scale * za @ zb.T [m, n]."""
    return scale * jnp.einsum('m d, n d -> m n', za, zb)


def _ce_rows(logits, targets):
    """Cross-entropy of each row of logits [m, n] against integer targets [m] -> [m]."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return lse - picked


# ----------------------------------------------------------------------------
# CLIP InfoNCE.


def infonce_loss(zimg, ztxt, scale):
    """Symmetric CLIP InfoNCE over the whole batch.

    Args:
      zimg: [B, D] L2-normalised image embeddings.
      ztxt: [B, D] L2-normalised text embeddings; pair i is (zimg[i], ztxt[i]).
      scale: scalar temperature multiplier (already exp'd, e.g. exp(t)).

    Returns:
      float32 scalar: (mean_i CE(logits[i, :], i) + mean_j CE(logits[:, j], j)) / 2
      with logits = scale * zimg @ ztxt.T, [B, B].
    """
    zimg, ztxt, scale = _f32(zimg, ztxt, scale)
    logits = _pair_logits(zimg, ztxt, scale)                    # [B_img, B_txt]
    targets = jnp.arange(logits.shape[0])
    ce_img = _ce_rows(logits, targets)                          # image -> text
    ce_txt = _ce_rows(rearrange(logits, 'i t -> t i'), targets)  # text -> image
    return (ce_img.mean() + ce_txt.mean()) / 2


def infonce_local_logits(za_local, zb_local, scale, *, axis_name: AxisName):
    """This device's rows of the global logits: za_local [b, D] against all of zb.

    Must run inside `jax.shard_map` with the batch split over `axis_name`. zb_local
    [b, D] is all-gathered (tiled, shard order = axis index order) to [B, D], B = n*b.
    Called as (zimg, ztxt) it gives the image rows, as (ztxt, zimg) the text rows.

    Returns:
      float32 [b, B] = scale * za_local @ all_gather(zb_local).T.
    """
    za_local, zb_local, scale = _f32(za_local, zb_local, scale)
    zb_all = jax.lax.all_gather(zb_local, axis_name, axis=0, tiled=True)  # [B, D]
    return _pair_logits(za_local, zb_all, scale)


def local_targets(b_local: int, *, axis_name: AxisName):
    """Global indices [b] of this device's examples: axis_index * b + arange(b)."""
    return jax.lax.axis_index(axis_name) * b_local + jnp.arange(b_local)


def infonce_loss_sharded(zimg_local, ztxt_local, scale, *, axis_name: AxisName):
    """`infonce_loss` of the global batch, computed inside `jax.shard_map`.

    Each device scores only its own b image rows against all B texts and its own b
    text rows against all B images (logits [b, B], never [B, B]); the summed CEs are
    psum'd over `axis_name`. Gradients flow through all_gather (its transpose is a
    reduce-scatter), so each device gets d(global loss)/d(its local embeddings).

    Args:
      zimg_local, ztxt_local: [b, D] this device's shard of the global [B, D] batch.
      scale: scalar, replicated.
      axis_name: mesh axis name, or tuple of names, the batch is split over.

    Returns:
      float32 scalar, the global loss (identical on every device).
    """
    b = zimg_local.shape[0]
    n = jax.lax.axis_size(axis_name)
    targets = local_targets(b, axis_name=axis_name)                      # [b]
    logits_img = infonce_local_logits(zimg_local, ztxt_local, scale, axis_name=axis_name)
    logits_txt = infonce_local_logits(ztxt_local, zimg_local, scale, axis_name=axis_name)
    local_sum = _ce_rows(logits_img, targets).sum() + _ce_rows(logits_txt, targets).sum()
    return jax.lax.psum(local_sum, axis_name) / (2 * n * b)


# ----------------------------------------------------------------------------
# SigLIP sigmoid loss.


def _sigmoid_block_sum(zimg, ztxt, scale, bias, *, positives: bool):
    """Sum of -log_sigmoid(label * logit) over a block zimg [m, D] x ztxt [n, D].

    Labels are +1 on the block diagonal when `positives` (a static bool: the block
    pairs each example with itself), -1 everywhere else.
    """
    logits = _pair_logits(zimg, ztxt, scale) + bias            # [m, n]
    if positives:
        labels = 2 * jnp.eye(*logits.shape, dtype=logits.dtype) - 1
    else:
        labels = -jnp.ones_like(logits)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits))


def sigmoid_loss(zimg, ztxt, scale, bias):
    """SigLIP pairwise sigmoid loss over the whole batch.

    Args:
      zimg, ztxt: [B, D] L2-normalised embeddings; pair i is (zimg[i], ztxt[i]).
      scale, bias: scalars; logits = scale * zimg @ ztxt.T + bias, [B, B].

    Returns:
      float32 scalar: -sum_ij log_sigmoid(label_ij * logits_ij) / B with
      label = +1 on the diagonal, -1 elsewhere.
    """
    zimg, ztxt, scale, bias = _f32(zimg, ztxt, scale, bias)
    return _sigmoid_block_sum(zimg, ztxt, scale, bias, positives=True) / zimg.shape[0]


def sigmoid_loss_sharded(zimg_local, ztxt_local, scale, bias, *, axis_name: AxisName):
    """`sigmoid_loss` of the global batch, computed inside `jax.shard_map` on a ring.

    At step k device i holds the text chunk of device (i + k) mod n, scores its
    [b, b] block (positives only at k == 0), then hands the chunk to device i - 1
    with `ppermute`. n steps, n - 1 permutes, peak memory O(b * b) per device; no
    all-gather. The per-device sums are psum'd and divided by B = n * b.

    Args:
      zimg_local, ztxt_local: [b, D] this device's shard of the global batch.
      scale, bias: scalars, replicated.
      axis_name: mesh axis name, or tuple of names, the batch is split over.

    Returns:
      float32 scalar, the global loss (identical on every device).
    """
    zimg_local, ztxt_local, scale, bias = _f32(zimg_local, ztxt_local, scale, bias)
    b = zimg_local.shape[0]
    n = jax.lax.axis_size(axis_name)
    # Device j sends its chunk to j - 1, so device i receives what i + 1 held.
    ring = [(j, (j - 1) % n) for j in range(n)]

    total = _sigmoid_block_sum(zimg_local, ztxt_local, scale, bias, positives=True)

    def step(_, carry):
        total, ztxt_chunk = carry
        ztxt_chunk = jax.lax.ppermute(ztxt_chunk, axis_name, ring)
        total += _sigmoid_block_sum(zimg_local, ztxt_chunk, scale, bias, positives=False)
        return total, ztxt_chunk

    total, _ = jax.lax.fori_loop(1, n, step, (total, ztxt_local))
    return jax.lax.psum(total, axis_name) / (n * b)


# ----------------------------------------------------------------------------
# Entry point for the train step.


def global_contrastive_loss(kind: str, zimg, ztxt, scale, bias, *, mesh: Mesh,
                            batch_axes: Sequence[str] | str):
    """Contrastive loss of a globally sharded batch; call under `jax.jit`.

    Wraps the sharded form in `jax.shard_map`: zimg/ztxt [B, D] are split along B
    over `batch_axes` (shard order = row-major order of those mesh axes), scale and
    bias are replicated; other mesh axes (e.g. 'tensor') just replicate the work.

    Args:
      kind: 'infonce' (bias is ignored) or 'sigmoid'.
      zimg, ztxt: [B, D] embeddings, B divisible by the product of batch_axes sizes.
      scale, bias: scalars.
      mesh: the device mesh.
      batch_axes: mesh axis name(s) the batch dimension is sharded over.

    Returns:
      float32 scalar, replicated.
    """
    if kind not in CONTRASTIVE_KINDS:
        raise ValueError(f'Unknown contrastive loss kind {kind!r}; choose one of {CONTRASTIVE_KINDS}.')
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    unknown = [a for a in batch_axes if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f'batch_axes {unknown} not in mesh axes {mesh.axis_names}.')
    if not batch_axes:  # Nothing to shard over: plain global loss.
        return infonce_loss(zimg, ztxt, scale) if kind == 'infonce' else sigmoid_loss(
            zimg, ztxt, scale, bias)

    if kind == 'infonce':
        local = lambda zi, zt, s, _: infonce_loss_sharded(zi, zt, s, axis_name=batch_axes)
    else:
        local = lambda zi, zt, s, b: sigmoid_loss_sharded(zi, zt, s, b, axis_name=batch_axes)
    scale, bias = _f32(scale, bias)
    sharded = jax.shard_map(
        local, mesh=mesh,
        in_specs=(P(batch_axes), P(batch_axes), P(), P()),
        out_specs=P())
    return sharded(zimg, ztxt, scale, bias)


# ----------------------------------------------------------------------------
# Masked language modelling.


def mlm_loss(logits, labels, weights):
    """Weighted masked-LM cross-entropy over the gathered prediction slots.

    Args:
      logits: [b, M, V] vocabulary logits at the M masked positions (any float dtype).
      labels: [b, M] int original token ids.
      weights: [b, M] float, 1 for a real prediction, 0 for padding slots.

    Returns:
      (loss, metrics): loss = sum(w * ce) / max(sum(w), 1) in float32; metrics has
      'mlm_accuracy' (weighted argmax accuracy) and 'mlm_count' (sum of weights).
    """
    logits = jnp.asarray(logits, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)                               # [b, M, V]
    ce = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    count = weights.sum()
    denom = jnp.maximum(count, 1.0)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)  # [b, M]
    loss = jnp.sum(weights * ce) / denom
    metrics = {'mlm_accuracy': jnp.sum(weights * correct) / denom, 'mlm_count': count}
    return loss, metrics


def replaced_token_loss(logits, labels, weights):
    """ELECTRA's discriminator loss: weighted binary cross-entropy, one logit per token.

    Args:
      logits: [b, l] (any float dtype), > 0 means "replaced".
      labels: [b, l] 1 where the token was replaced, 0 where it is the original.
      weights: [b, l] float, 1 for a real (non-padding) token, 0 elsewhere.

    Returns:
      (loss, metrics): loss = Σ w·bce / max(Σ w, 1) in float32; metrics: 'rtd_accuracy'
      (weighted, logit > 0 vs label), 'rtd_replaced' (the weighted fraction replaced).
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    bce = -(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits))
    denom = jnp.maximum(weights.sum(), 1.0)
    correct = ((logits > 0) == (labels > 0)).astype(jnp.float32)
    return jnp.sum(weights * bce) / denom, {'rtd_accuracy': jnp.sum(weights * correct) / denom,
                                            'rtd_replaced': jnp.sum(weights * labels) / denom}


def next_token_loss(logits, tokens, weights, z_loss=0.0):
    """Causal-LM cross-entropy: row i of logits predicts token i + 1.

    Args:
      logits: [b, l, V] (any float dtype); the last row has no target and is not read.
      tokens: [b, l] int token ids.
      weights: [b, l - 1] float, 1 where tokens[:, 1:] is a target, 0 elsewhere.
      z_loss: coefficient of PaLM's auxiliary z-loss, mean of log(Z)², Z = Σ exp(logits).

    Returns:
      (loss, metrics): loss = Σ w·ce / max(Σ w, 1) + z_loss · Σ w·log(Z)² / max(Σ w, 1) in
      float32; metrics: 'lm_accuracy' (weighted argmax), 'lm_count' (Σ w), 'lm_z' (mean log(Z)²).
    """
    logits = jnp.asarray(logits, jnp.float32)[:, :-1]
    targets = tokens[:, 1:].astype(jnp.int32)
    weights = jnp.asarray(weights, jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)                                   # [b, l - 1]
    ce = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    count = weights.sum()
    denom = jnp.maximum(count, 1.0)
    z = jnp.sum(weights * lse ** 2) / denom
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    loss = jnp.sum(weights * ce) / denom + z_loss * z
    return loss, {'lm_accuracy': jnp.sum(weights * correct) / denom, 'lm_count': count, 'lm_z': z}


def chunked_next_token_loss(head, hidden, tokens, weights, z_loss=0.0, chunk=128):
    """`next_token_loss` of `head(hidden)` without the [b, l, V] logits: the head runs on
    `chunk` rows at a time inside a rematerialised scan (its backward recomputes each chunk's
    logits), so only [b, chunk, V] logits exist at once.

    Args:
      head: hidden [b, c, e] -> logits [b, c, V].
      hidden: [b, l, e] final hidden states; the last row has no target and is not read.
      tokens, weights, z_loss: as in `next_token_loss`.
      chunk: rows per head call (the l - 1 rows are padded to a multiple, with weight 0).
    """
    h, targets = hidden[:, :-1], tokens[:, 1:].astype(jnp.int32)
    weights = jnp.asarray(weights, jnp.float32)
    n = -(-h.shape[1] // chunk)
    pad = n * chunk - h.shape[1]

    def chunks(x):   # [b, n·chunk, ...] -> [n, b, chunk, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(sums, xs):
        hc, tc, wc = xs
        logits = jnp.asarray(head(hc), jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        ce = lse - jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == tc).astype(jnp.float32)
        return sums + jnp.stack([jnp.sum(wc * ce), jnp.sum(wc * lse ** 2), jnp.sum(wc * correct)]), None

    sums, _ = jax.lax.scan(one, jnp.zeros(3, jnp.float32), (chunks(h), chunks(targets), chunks(weights)))
    count = weights.sum()
    denom = jnp.maximum(count, 1.0)
    z = sums[1] / denom
    return sums[0] / denom + z_loss * z, {'lm_accuracy': sums[2] / denom, 'lm_count': count, 'lm_z': z}
