"""TrainState pytree, created already sharded: abstract shapes first, then a sharded init."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mmjax.nn.build import init_args
from mmjax.sharding import logical_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array       # int32 scalar: number of updates applied
    params: dict
    opt_state: tuple
    rng: jax.Array        # base key; the step's key is fold_in(rng, step), so resume is exact


def _init_fn(config, model, tx):
    """rng -> TrainState whose params / optimizer leaves are boxed with logical axis names."""
    method, args = init_args(config)

    def init(rng):
        params_rng, train_rng = jax.random.split(rng)
        params = model.init(params_rng, *args, method=method)["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), train_rng)

    return init


def abstract_train_state(config, model, tx, mesh, rule_table):
    """(ShapeDtypeStructs with shardings, shardings) of the state, allocating nothing."""
    with nn.logical_axis_rules(rule_table):
        boxed = jax.eval_shape(_init_fn(config, model, tx), jax.random.PRNGKey(config.seed))
        shardings = logical_shardings(boxed, mesh, rule_table)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def create_train_state(config, model, tx, mesh, rule_table):
    """Returns (state, shardings). No full copy of the params ever lives on one device:
    `jax.eval_shape` gives logical names, `jax.jit(init, out_shardings=...)` builds in place."""
    _, shardings = abstract_train_state(config, model, tx, mesh, rule_table)
    init = _init_fn(config, model, tx)
    with nn.logical_axis_rules(rule_table):
        state = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(
            jax.random.PRNGKey(config.seed))
    return state, shardings
