"""The optax optimiser of a config: warm-up + decay schedule, clipping, AdamW with a decay mask."""

import jax
import optax

from mmjax import param_groups

# Weight decay applies to matrices only: kernels ('kernel', 'qkv_kernel', ...) and token
# embedding tables ('embedding'). Biases, norms, position embeddings ('pos_embedding'), the
# class token and the logit scale/bias are left alone. Decided by name, not rank, because
# scan-over-layers stacks a norm's 1-D scale into a 2-D array.
def _decayed(name):
    return name.endswith("kernel") or name == "embedding"


def _leaf_name(path):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    names = [n for n in names if isinstance(n, str) and n != "value"]
    return names[-1] if names else ""


def decay_mask(params):
    """True where weight decay applies (see `_decayed`)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _decayed(_leaf_name(path)), params)


def schedule(optim_config, total_steps):
    """Linear warm-up to `lr`, then cosine / linear decay to `lr * end_lr_ratio` (or constant)."""
    c = optim_config
    warmup = min(c.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    end = c.lr * c.end_lr_ratio
    if c.decay == "cosine":
        after = optax.cosine_decay_schedule(c.lr, decay_steps, alpha=c.end_lr_ratio)
    elif c.decay == "linear":
        after = optax.linear_schedule(c.lr, end, decay_steps)
    else:
        after = optax.constant_schedule(c.lr)
    return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), after], [warmup])


OPTIMIZERS = {
    "adamw": lambda c, lr: optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps,
                                       weight_decay=c.weight_decay, mask=decay_mask),
    "sgd": lambda c, lr: optax.sgd(lr),
}
# Never let optax apply a non-finite update itself: the loop stops the run instead.
NEVER = 2 ** 31 - 1


def make_optimizer(optim_config, total_steps, model_config=None):
    """Returns (optax transform, learning-rate schedule).

    `frozen` patterns: those params get no update, no optimizer state and no weight decay
    (`optax.multi_transform` with `set_to_zero`). Layer-wise decay, a head rate, training
    only the top layers and gradual unfreezing scale the update per leaf (param_groups.py;
    they need `model_config` for the towers' depths). With `skip_nonfinite`, an update whose
    gradients hold a NaN or inf is skipped (params and moments stay as they were) and
    counted; the train loop stops the run when more than `max_skipped_steps` in a row are."""
    c = optim_config
    if c.name not in OPTIMIZERS:
        raise ValueError(f"optim.name {c.name!r} unknown; valid: {', '.join(OPTIMIZERS)}")
    lr = schedule(c, total_steps)
    chain = [optax.clip_by_global_norm(c.clip_norm)] if c.clip_norm else []
    chain.append(OPTIMIZERS[c.name](c, lr))
    if param_groups.is_scaled(c):
        if model_config is None:
            raise ValueError("layer-wise rates and top-layer training need the model config")
        chain.append(param_groups.scale_by_layers(c, model_config))
    tx = optax.chain(*chain)
    if c.get("frozen", ()):
        patterns = tuple(c.frozen)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   lambda params: param_groups.frozen_labels(params, patterns))
    if c.get("skip_nonfinite", True):
        tx = optax.apply_if_finite(tx, max_consecutive_errors=NEVER)
    return tx, lr
