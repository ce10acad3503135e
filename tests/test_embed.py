"""The token and type lookups (mmjax/nn/embed.py): flax's values, gradients summed in float32."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.embed import Embed


@pytest.mark.parametrize("rows", [2, 300], ids=["one-hot", "gather"])
def test_bfloat16_lookup_has_flax_values_and_a_float32_sum_of_gradients(rows):
    """Forward: exactly flax's nn.Embed (rows cast to bfloat16). Backward: every occurrence
    of a row adds its cotangent in float32, as np.add.at does: 4,096 ones into row 0 sum to
    4,096 (a bfloat16 running sum stops at 256, where 256 + 1 rounds back to 256)."""
    ids = np.zeros(4096, np.int32)
    ids[::7] = np.arange(len(ids[::7])) % rows
    ours = Embed(rows, 8, dtype=jnp.bfloat16)
    params = ours.init(jax.random.key(0), ids)
    flax_out = nn.Embed(rows, 8, dtype=jnp.bfloat16).apply(params, ids)
    out = ours.apply(params, ids)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(flax_out, np.float32))

    cotangent = np.random.default_rng(0).integers(1, 3, (len(ids), 8)).astype(np.float32)
    grad = jax.grad(lambda p: jnp.sum(ours.apply(p, ids).astype(jnp.float32) * cotangent))(params)
    want = np.zeros((rows, 8), np.float32)
    np.add.at(want, ids, cotangent)
    assert want[0, 0] > 4096
    np.testing.assert_array_equal(np.asarray(grad["params"]["embedding"]), want)
