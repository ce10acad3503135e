"""Which parameters train, and how fast: frozen subtrees, top-k layers, gradual unfreezing,
layer-wise learning-rate decay and a separate rate for new heads, from parameter paths.

Paths are '/'-joined names ('image/encoder/layers_0/attn/qkv_kernel'); patterns match them
with fnmatch ('*' crosses '/', so 'image/*' is the whole image tower). In a tower (the
top-level 'image' and 'text' subtrees, depth from `config.model.<tower>.depth`) each leaf
has a layer: 0 for the embeddings below the blocks, i + 1 for block i, `depth` for what sits
on top (final norms); a scan-stacked leaf holds every block, so its layer is an array over
its leading axis. Leaves outside the towers (projections, heads, logit scale) are on top.
"""

import fnmatch
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

TOWERS = ("image", "text")
_BELOW_BLOCKS = ("patch_embed", "pos_embedding", "cls_token", "token_embed", "type_embed",
                 "ln_pre", "ln_embed")


def path_of(key_path) -> str:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in key_path]
    return "/".join(str(n) for n in names if n is not None and n != "value")


def matches(path: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def layer_of(path: str, leaf, depths: dict):
    """(tower, layer) of a leaf; layer is an int, or an int array [depth, 1, ...] for a
    scan-stacked leaf; (None, None) outside the towers."""
    parts = path.split("/")
    tower = parts[0] if parts[0] in depths else None
    if tower is None:
        return None, None
    depth = depths[tower]
    if "layers" in parts:      # scanned: the leading axis is the block
        return tower, np.arange(1, depth + 1).reshape((depth,) + (1,) * (np.ndim(leaf) - 1))
    for part in parts:
        m = re.fullmatch(r"layers_(\d+)", part)
        if m:
            return tower, int(m.group(1)) + 1
    return tower, 0 if len(parts) > 1 and parts[1] in _BELOW_BLOCKS else depth


def _depths(model_config):
    return {t: int(model_config[t].depth) for t in TOWERS if t in model_config}


def multipliers(params, optim_config, model_config, step=0):
    """Per-leaf factors on the update (scalar or [depth, 1, ...] arrays): layer-wise decay,
    the head rate, and 0 for layers not (yet) trained at `step` (a traced int is fine)."""
    c, depths = optim_config, _depths(model_config)
    decay, head, head_mult = c.get("layer_decay", 1.0), c.get("head", ()), c.get("head_lr_mult", 1.0)
    top_k, every = c.get("trainable_top_layers", 0), c.get("unfreeze_every", 0)

    def factor(key_path, leaf):
        path = path_of(key_path)
        tower, layer = layer_of(path, leaf, depths)
        m = jnp.float32(head_mult if matches(path, head) else 1.0)
        if tower is None:
            return m
        depth = depths[tower]
        m = m * jnp.asarray(decay, jnp.float32) ** (depth - jnp.asarray(layer, jnp.float32))
        if top_k or every:
            trained = top_k or 1
            if every:
                trained = jnp.minimum(depth + 1, trained + step // every)
            m = m * (jnp.asarray(layer) > depth - trained)
        return m

    return jax.tree_util.tree_map_with_path(factor, params)


def is_scaled(optim_config) -> bool:
    c = optim_config
    return (c.get("layer_decay", 1.0) != 1.0 or c.get("head_lr_mult", 1.0) != 1.0
            or bool(c.get("trainable_top_layers", 0)) or bool(c.get("unfreeze_every", 0)))


def scale_by_layers(optim_config, model_config) -> optax.GradientTransformation:
    """Multiplies each update by `multipliers(...)` at the current step (after the optimizer,
    so it scales the learning rate, weight decay included)."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        del params
        factors = multipliers(updates, optim_config, model_config, state.count)
        scaled = jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, factors)
        return scaled, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def frozen_labels(params, patterns):
    """'frozen' where a leaf's path matches one of `patterns`, else 'train'."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if matches(path_of(p), patterns) else "train", params)


def stop_frozen(params, patterns):
    """`params` with `jax.lax.stop_gradient` on the frozen leaves: their gradients are zeros
    XLA folds away, so a locked tower costs a forward pass, not a backward one too."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.lax.stop_gradient(x) if matches(path_of(p), patterns) else x, params)
