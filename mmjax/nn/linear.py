"""x @ w with a kernel gradient that XLA:CPU computes without transposing the wide operand.

The kernel gradient of y = x @ w is x^T g, a contraction over every row. XLA:CPU hands the
dot library a row-major lhs with the contracted dimension last, so it physically transposes
one operand first. JAX's transpose rule writes it as (g^T x)^T, which transposes g: at
CLIP-S's fc1 and qkv (256 -> 1024, 256 -> 768, 4160 rows) that is the wide operand, and the
copy costs as much as half the matmul. `linear` picks the order that transposes the narrow
one (x^T g when w is at most as tall as wide, else JAX's), on CPU only: GPU and TPU matmuls
take transposed operands for free, so there it is plain `lax.dot_general` (and remat
policies see the same primitives as before). Same products and sums, only the order of the
operands of the kernel-gradient dot differs.
"""

import jax
from jax import lax


def _dot(x, w):
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def _cpu_matmul(x, w):
    return _dot(x, w)


def _fwd(x, w):
    return _dot(x, w), (x, w)


def _bwd(res, g):
    x, w = res
    dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    rows = tuple(range(x.ndim - 1))
    if w.shape[0] <= w.shape[1]:   # x is the narrow operand: XLA transposes it
        dw = lax.dot_general(x, g, ((rows, rows), ((), ())))
    else:                          # g is the narrow one: JAX's own order transposes g
        dw = lax.dot_general(g, x, ((rows, rows), ((), ()))).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


_cpu_matmul.defvjp(_fwd, _bwd)


def linear(x, w):
    """x [..., a] @ w [a, ...] -> [..., *w.shape[1:]] (w's trailing dims are flattened for the dot)."""
    if jax.default_backend() != "cpu":
        return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))
    out = w.shape[1:]
    y = _cpu_matmul(x, w.reshape(w.shape[0], -1))
    return y.reshape(y.shape[:-1] + out)


def dot_general(x, w, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` for `nn.Dense(dot_general=...)`: its x [..., a] @ w [a, f] through `linear`."""
    if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or precision is not None \
            or preferred_element_type is not None:
        return lax.dot_general(x, w, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
    return linear(x, w)
