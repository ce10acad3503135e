"""Nearest neighbours by dot product on device, a chunk of queries at a time: the whole
[queries, keys] score matrix never exists, on the device or on the host."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

CHUNK = 1024   # queries scored at once: a [1024, keys] float32 block (200 MB at 50k keys)


@functools.partial(jax.jit, static_argnames="k")
def _top_k(queries, keys, k):
    """[c, d] x [m, d] -> indices [c, k] of the k largest dot products, best first."""
    scores = jnp.einsum("cd,md->cm", queries, keys, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(scores, k)[1]


def top_k(queries, keys, k, chunk=CHUNK, device=None) -> np.ndarray:
    """Indices [n, k] (numpy int) of each query's k most similar keys, best first.

    queries [n, d], keys [m, d] (numpy, the same on every process); the work runs on
    `device` (default: this process's first device), `chunk` queries at a time, the last
    chunk padded so that every chunk reuses one compiled program."""
    queries, keys = np.asarray(queries, np.float32), np.asarray(keys, np.float32)
    k = min(k, len(keys))
    device = device or jax.local_devices()[0]
    keys_on_device = jax.device_put(keys, device)
    chunk = max(1, min(chunk, len(queries)))
    out = []
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        padded = np.concatenate([block, np.zeros((chunk - len(block), block.shape[1]), np.float32)])
        out.append(np.asarray(_top_k(jax.device_put(padded, device), keys_on_device, k))[:len(block)])
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)
