"""TrainState pytree, created already sharded: abstract shapes first, then a sharded init."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mmjax.sharding import logical_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array       # int32 scalar: number of updates applied
    params: dict
    opt_state: tuple
    rng: jax.Array        # base key; the step's key is fold_in(rng, step), so resume is exact


def init_fn(task, model, tx):
    """rng -> TrainState whose params / optimizer leaves are boxed with logical axis names."""
    method, args = task.init_args()

    def init(rng):
        params_rng, train_rng = jax.random.split(rng)
        params = model.init(params_rng, *args, method=method)["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), train_rng)

    return init


def abstract_train_state(init, seed, mesh, rule_table):
    """(ShapeDtypeStructs with shardings, shardings) of the state, allocating nothing."""
    with nn.logical_axis_rules(rule_table):
        boxed = jax.eval_shape(init, jax.random.PRNGKey(seed))
        shardings = logical_shardings(boxed, mesh, rule_table)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def create_train_state(init, seed, shardings, rule_table):
    """The state, written shard by shard where it lives: no full copy of the params is ever
    on one device (`jax.jit(init, out_shardings=...)`)."""
    with nn.logical_axis_rules(rule_table):
        return jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(
            jax.random.PRNGKey(seed))
