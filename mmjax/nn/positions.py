"""Position encodings: fixed sinusoid tables (1-D, 2-D) and rotary (RoPE) rotations of q and k.

A tower's `position` option picks one (`model.text.position`, `model.image.position`):

- 'learned': a trained table added to the embeddings (the default; params 'pos_embedding').
- 'sinusoidal': a fixed table added to the embeddings, no params. Text: the Transformer's
  (Vaswani et al. 2017, §3.5), channel 2i = sin(p / 10000^(2i/width)), channel 2i+1 = cos
  of the same; the tokens are scaled by sqrt(width) from an init std of width^-0.5 (§3.4;
  fairseq's Embedding and embed_scale), so they start at the table's scale (BERT's 0.02
  init under a unit-scale table sat at the unigram loss in the smoke MLM). Images: MAE's
  `get_2d_sincos_pos_embed` (He et al. 2022, facebookresearch/mae util/pos_embed.py): the
  first half of the channels encode the patch's column, the second half its row, each half
  [sin(p·ω) | cos(p·ω)], ω_i = 10000^(-i / (width/4)); the class token gets zeros (no
  position), as in MAE.
- 'rotary': no table; each layer rotates the queries and keys (RoFormer, Su et al. 2021,
  eq. 34): head channels (2i, 2i+1) as a pair turned by the angle p·θ_i, θ_i =
  rope_base^(-2i/head_dim), so q·k depends on the positions only through their offset.
  Images: axial 2-D (RoPE-ViT's RoPE-Axial, Heo et al. 2024, naver-ai/rope-vit): the first
  head_dim/4 pairs turn by the column, the next head_dim/4 by the row, θ_t =
  rope_base^(-4t/head_dim); the class token is not rotated (angle 0, as RoPE-ViT leaves
  it). RoPE-ViT's images use rope_base 100; ours defaults to 10000 for both towers.

Tables and angles are numpy (static shapes, float64 then float32): constants in the jit.
"""

import jax.numpy as jnp
import numpy as np

POSITIONS = ("learned", "sinusoidal", "rotary")


def check(position: str, tower: str) -> None:
    if position not in POSITIONS:
        raise ValueError(f"model.{tower}.position={position!r} is unknown; valid: "
                         f"{', '.join(map(repr, POSITIONS))}")


def _divisible(n, k, what, tower, position):
    if n % k:
        raise ValueError(f"model.{tower}.position={position!r} needs {what} ({n}) divisible by "
                         f"{k}; change model.{tower}.width / num_heads, or the position option")


def sinusoid_1d(length: int, width: int, base: float = 10000.0) -> np.ndarray:
    """[length, width] float32: row p, channel 2i sin(p·ω_i), 2i+1 cos(p·ω_i), ω_i = base^(-2i/width)."""
    _divisible(width, 2, "the width", "text", "sinusoidal")
    omega = base ** (-np.arange(0, width, 2) / width)                       # [width/2]
    angles = np.arange(length)[:, None] * omega                             # [length, width/2]
    return np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(length, width).astype(np.float32)


def sinusoid_2d(rows: int, cols: int, width: int, base: float = 10000.0) -> np.ndarray:
    """[(rows cols), width] float32, patches in row-major order: [sin(c·ω) | cos(c·ω) |
    sin(r·ω) | cos(r·ω)] of column c and row r, ω_i = base^(-i/(width/4)) (MAE's layout)."""
    _divisible(width, 4, "the width", "image", "sinusoidal")
    quarter = width // 4
    omega = base ** (-np.arange(quarter) / quarter)                         # [width/4]
    r, c = (g.reshape(-1, 1) * omega for g in np.meshgrid(np.arange(rows), np.arange(cols),
                                                           indexing="ij"))
    return np.concatenate([np.sin(c), np.cos(c), np.sin(r), np.cos(r)], axis=1).astype(np.float32)


def rotary_1d(length: int, head_dim: int, base: float) -> np.ndarray:
    """Rotation angles [length, head_dim/2] float32: p·θ_i, θ_i = base^(-2i/head_dim)."""
    _divisible(head_dim, 2, "the head dim, width / num_heads,", "text", "rotary")
    theta = base ** (-np.arange(0, head_dim, 2) / head_dim)
    return (np.arange(length)[:, None] * theta).astype(np.float32)


def rotary_2d(rows: int, cols: int, head_dim: int, base: float) -> np.ndarray:
    """Angles [(rows cols), head_dim/2] float32, patches row-major: pairs [0, head_dim/4)
    turn by the column c·θ_t, pairs [head_dim/4, head_dim/2) by the row r·θ_t,
    θ_t = base^(-4t/head_dim)."""
    _divisible(head_dim, 4, "the head dim, width / num_heads,", "image", "rotary")
    theta = base ** (-np.arange(0, head_dim, 4) / head_dim)                 # [head_dim/4]
    r, c = (g.reshape(-1, 1) for g in np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"))
    return np.concatenate([c * theta, r * theta], axis=1).astype(np.float32)


def rotate(x, angles):
    """x [b, n, heads, d] with its pairs (2i, 2i+1) turned by angles [n, d/2] or [b, n, d/2]:
    (a, b) -> (a cos - b sin, a sin + b cos), computed in float32, returned in x's dtype."""
    cos, sin = (f(jnp.asarray(angles, jnp.float32))[..., None, :] for f in (jnp.cos, jnp.sin))
    pairs = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape).astype(x.dtype)


def with_class_token(table: np.ndarray) -> np.ndarray:
    """table [n, k] with a zero row first: the class token gets no position (no rotation)."""
    return np.concatenate([np.zeros((1, table.shape[1]), table.dtype), table])
