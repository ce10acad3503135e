"""Losses vs plain-numpy float64 references, and sharded forms vs global ones on 8 CPU devices."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from mmjax import losses  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
B, D = 16, 8


# ----------------------------------------------------------------------------
# Independent numpy references (float64, analytic gradients).


def _lse(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_infonce(x, y, s):
    """Returns (loss, dL/dx, dL/dy, dL/ds)."""
    x, y = np.float64(x), np.float64(y)
    n = x.shape[0]
    sim = x @ y.T
    logits = s * sim
    diag = np.diag(logits)
    loss = ((_lse(logits, 1) - diag).mean() + (_lse(logits, 0) - diag).mean()) / 2
    eye = np.eye(n)
    g = ((_softmax(logits, 1) - eye) + (_softmax(logits, 0) - eye)) / (2 * n)  # dL/dlogits
    return loss, s * g @ y, s * g.T @ x, np.sum(g * sim)


def np_sigmoid(x, y, s, b):
    """Returns (loss, dL/dx, dL/dy, dL/ds, dL/db)."""
    x, y = np.float64(x), np.float64(y)
    n = x.shape[0]
    sim = x @ y.T
    z = 2 * np.eye(n) - 1
    t = z * (s * sim + b)
    loss = np.sum(np.logaddexp(0, -t)) / n                      # -log_sigmoid(t)
    g = -z / (1 + np.exp(t)) / n                                # dL/dlogits
    return loss, s * g @ y, s * g.T @ x, np.sum(g * sim), np.sum(g)


def np_mlm(logits, labels, weights):
    """Returns (loss, accuracy, count)."""
    logits = np.float64(logits)
    logp = logits - _lse(logits, -1)[..., None]
    ce = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    count = weights.sum()
    denom = max(count, 1.0)
    acc = np.sum(weights * (logits.argmax(-1) == labels)) / denom
    return np.sum(weights * ce) / denom, acc, count


def _embeddings(seed, n=B, d=D, dtype=np.float32):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        z = rng.normal(size=(n, d))
        out.append((z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(dtype))
    return out


# ----------------------------------------------------------------------------
# The references themselves: analytic gradients vs central finite differences.


def _fd(f, arr, eps=1e-6):
    arr = np.array(arr, np.float64)
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        hi, lo = arr.copy(), arr.copy()
        hi[idx] += eps
        lo[idx] -= eps
        grad[idx] = (f(hi) - f(lo)) / (2 * eps)
    return grad


def test_numpy_reference_gradients_match_finite_differences():
    x, y = (np.float64(a) for a in _embeddings(0, n=5, d=3))
    s, b = 3.0, -1.5
    _, dx, dy, ds = np_infonce(x, y, s)
    np.testing.assert_allclose(dx, _fd(lambda v: np_infonce(v, y, s)[0], x), atol=1e-7)
    np.testing.assert_allclose(dy, _fd(lambda v: np_infonce(x, v, s)[0], y), atol=1e-7)
    np.testing.assert_allclose(ds, _fd(lambda v: np_infonce(x, y, v[()])[0], np.array(s)), atol=1e-7)
    _, dx, dy, ds, db = np_sigmoid(x, y, s, b)
    np.testing.assert_allclose(dx, _fd(lambda v: np_sigmoid(v, y, s, b)[0], x), atol=1e-7)
    np.testing.assert_allclose(dy, _fd(lambda v: np_sigmoid(x, v, s, b)[0], y), atol=1e-7)
    np.testing.assert_allclose(ds, _fd(lambda v: np_sigmoid(x, y, v[()], b)[0], np.array(s)), atol=1e-7)
    np.testing.assert_allclose(db, _fd(lambda v: np_sigmoid(x, y, s, v[()])[0], np.array(b)), atol=1e-7)


# ----------------------------------------------------------------------------
# Global losses.


@pytest.mark.parametrize('scale', [1.0, 10.0])
def test_infonce_value_and_grads(scale):
    x, y = _embeddings(1)
    loss, dx, dy, ds = np_infonce(x, y, scale)
    val, grads = jax.value_and_grad(losses.infonce_loss, argnums=(0, 1, 2))(x, y, jnp.float32(scale))
    assert val.dtype == jnp.float32 and val.shape == ()
    np.testing.assert_allclose(val, loss, **TOL)
    for got, want in zip(grads, (dx, dy, ds)):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize('scale,bias', [(1.0, 0.0), (10.0, -10.0)])
def test_sigmoid_value_and_grads(scale, bias):
    x, y = _embeddings(2)
    loss, *want = np_sigmoid(x, y, scale, bias)
    val, grads = jax.value_and_grad(losses.sigmoid_loss, argnums=(0, 1, 2, 3))(
        x, y, jnp.float32(scale), jnp.float32(bias))
    assert val.dtype == jnp.float32 and val.shape == ()
    np.testing.assert_allclose(val, loss, **TOL)
    for got, w in zip(grads, want):
        np.testing.assert_allclose(got, w, **TOL)


def test_bf16_inputs_computed_in_float32():
    x, y = _embeddings(3)
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    xr, yr = np.float64(np.asarray(xb, np.float32)), np.float64(np.asarray(yb, np.float32))
    v = losses.infonce_loss(xb, yb, jnp.float32(5.0))
    assert v.dtype == jnp.float32
    np.testing.assert_allclose(v, np_infonce(xr, yr, 5.0)[0], **TOL)
    v = losses.sigmoid_loss(xb, yb, jnp.float32(5.0), jnp.float32(-2.0))
    assert v.dtype == jnp.float32
    np.testing.assert_allclose(v, np_sigmoid(xr, yr, 5.0, -2.0)[0], **TOL)


def test_mlm_loss():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
    labels[0, :3] = logits[0, :3].argmax(-1)  # make some predictions right
    weights = (rng.uniform(size=(3, 5)) < 0.7).astype(np.float32)
    weights[0, :3] = 1
    loss, metrics = jax.jit(losses.mlm_loss)(logits, labels, weights)
    ref_loss, ref_acc, ref_count = np_mlm(logits, labels, weights)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_loss, **TOL)
    np.testing.assert_allclose(metrics['mlm_accuracy'], ref_acc, **TOL)
    np.testing.assert_allclose(metrics['mlm_count'], ref_count, **TOL)
    # Padding slots carry no weight: arbitrary labels there change nothing.
    labels2 = np.where(weights > 0, labels, 7).astype(np.int32)
    np.testing.assert_allclose(losses.mlm_loss(logits, labels2, weights)[0], ref_loss, **TOL)
    # bf16 logits are upcast.
    lb = jnp.asarray(logits, jnp.bfloat16)
    loss_b, _ = losses.mlm_loss(lb, labels, weights)
    assert loss_b.dtype == jnp.float32
    np.testing.assert_allclose(loss_b, np_mlm(np.asarray(lb, np.float32), labels, weights)[0], **TOL)


def test_mlm_loss_no_predictions():
    loss, metrics = losses.mlm_loss(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32),
                                    jnp.zeros((2, 3)))
    assert float(loss) == 0.0 and float(metrics['mlm_count']) == 0.0
    assert float(metrics['mlm_accuracy']) == 0.0


# ----------------------------------------------------------------------------
# Sharded forms on simulated devices.

MESHES = [
    # (mesh shape, mesh axis names, batch_axes)
    ((8,), ('data',), ('data',)),
    ((2, 4), ('data', 'fsdp'), ('data', 'fsdp')),
    ((4, 2), ('data', 'tensor'), ('data',)),
    ((2, 2, 2), ('data', 'fsdp', 'tensor'), ('data', 'fsdp')),
    ((1,), ('data',), ('data',)),
]
MESH_IDS = ['data8', 'data2xfsdp4', 'data4+tensor2', 'data2xfsdp2+tensor2', 'single']


def _mesh(shape, names):
    n = int(np.prod(shape))
    assert len(jax.devices()) >= n, 'tests need 8 CPU devices (XLA_FLAGS, see conftest.py)'
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names),
                         devices=jax.devices()[:n])


@pytest.mark.parametrize('shape,names,batch_axes', MESHES, ids=MESH_IDS)
@pytest.mark.parametrize('kind', ['infonce', 'sigmoid'])
def test_sharded_matches_global(kind, shape, names, batch_axes):
    mesh = _mesh(shape, names)
    x, y = _embeddings(5)
    shard = NamedSharding(mesh, P(batch_axes))
    xs, ys = jax.device_put(x, shard), jax.device_put(y, shard)
    scale, bias = jnp.float32(7.0), jnp.float32(-4.0)

    def sharded(zi, zt, s, b):
        return losses.global_contrastive_loss(kind, zi, zt, s, b, mesh=mesh, batch_axes=batch_axes)

    if kind == 'infonce':
        glob = lambda zi, zt, s, b: losses.infonce_loss(zi, zt, s)
        ref_loss, *ref_grads = np_infonce(x, y, 7.0)
        ref_grads.append(0.0)
    else:
        glob = losses.sigmoid_loss
        ref_loss, *ref_grads = np_sigmoid(x, y, 7.0, -4.0)

    val, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(xs, ys, scale, bias)
    gval, ggrads = jax.value_and_grad(glob, argnums=(0, 1, 2, 3))(x, y, scale, bias)
    np.testing.assert_allclose(val, gval, **TOL)
    np.testing.assert_allclose(val, ref_loss, **TOL)
    for got, want, ref in zip(grads, ggrads, ref_grads):
        np.testing.assert_allclose(got, want, **TOL)
        np.testing.assert_allclose(got, ref, **TOL)


@pytest.mark.parametrize('shape,names,batch_axes', MESHES[:4], ids=MESH_IDS[:4])
def test_infonce_local_logits_block(shape, names, batch_axes):
    mesh = _mesh(shape, names)
    x, y = _embeddings(6)
    n_batch = int(np.prod([mesh.shape[a] for a in batch_axes]))
    b_local = B // n_batch

    @jax.jit
    def rows(zi, zt, s):
        f = lambda a, c, s: losses.infonce_local_logits(a, c, s, axis_name=batch_axes)
        return jax.shard_map(f, mesh=mesh, in_specs=(P(batch_axes), P(batch_axes), P()),
                             out_specs=P(batch_axes))(zi, zt, s)

    out = rows(x, y, jnp.float32(3.0))
    full = 3.0 * np.float64(x) @ np.float64(y).T
    assert out.shape == (B, B)
    for s in out.addressable_shards:
        assert s.data.shape == (b_local, B)  # local batch x global batch, per device
        np.testing.assert_allclose(s.data, full[s.index], **TOL)


def test_sigmoid_sharded_uses_ring_not_all_gather():
    mesh = _mesh((8,), ('data',))
    x, y = _embeddings(7)
    jaxpr = lambda kind: str(jax.make_jaxpr(
        lambda zi, zt: losses.global_contrastive_loss(kind, zi, zt, 2.0, 0.5, mesh=mesh,
                                                      batch_axes=('data',)))(x, y))
    sig = jaxpr('sigmoid')
    assert 'ppermute' in sig and 'all_gather' not in sig
    assert 'all_gather' in jaxpr('infonce')


def test_global_contrastive_loss_accepts_str_batch_axis_and_rejects_bad_kind():
    mesh = _mesh((8,), ('data',))
    x, y = _embeddings(8)
    v = jax.jit(lambda a, c: losses.global_contrastive_loss(
        'sigmoid', a, c, 3.0, -1.0, mesh=mesh, batch_axes='data'))(x, y)
    np.testing.assert_allclose(v, np_sigmoid(x, y, 3.0, -1.0)[0], **TOL)
    with pytest.raises(ValueError, match='infonce'):
        losses.global_contrastive_loss('softmax', x, y, 1.0, 0.0, mesh=mesh, batch_axes=('data',))
    with pytest.raises(ValueError, match='batch_axes'):
        losses.global_contrastive_loss('infonce', x, y, 1.0, 0.0, mesh=mesh, batch_axes=('fsdp',))
