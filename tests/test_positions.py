"""Position encodings (model.{text,image}.position): the sinusoid tables and rotary rotations
equal numpy written from the papers' definitions, rotary scores depend only on the offset,
the default 'learned' is today's model, each encoding trains the smoke MLM (slow), and
exports that hold learned tables only refuse the others in one line."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import export, tasks
from mmjax.convert import layout
from mmjax.nn import options, positions
from mmjax.nn.attention import Attention
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT
from tiny_configs import TOKENIZER, tiny_batch, tiny_config

# The smoke runs' CLI helpers and their shared data dir (the fixture is used by name below).
from test_smoke import ROOT, _final_eval, _mmjax, data_dir  # noqa: F401


# --- numpy references, from the papers' definitions --------------------------------------

def transformer_table(length, d):
    """Vaswani et al. 2017, §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    pe = np.zeros((length, d))
    for pos in range(length):
        for i in range(d // 2):
            pe[pos, 2 * i] = np.sin(pos / 10000 ** (2 * i / d))
            pe[pos, 2 * i + 1] = np.cos(pos / 10000 ** (2 * i / d))
    return pe


def mae_table(rows, cols, d):
    """MAE's get_2d_sincos_pos_embed: half the channels for the column (w), half for the row
    (h), each half [sin | cos] of pos * omega_k, omega_k = 1 / 10000^(k / (d/4)); patches row-major."""
    q = d // 4
    pe = np.zeros((rows * cols, d))
    for r in range(rows):
        for c in range(cols):
            for k in range(q):
                omega = 1 / 10000 ** (k / q)
                pe[r * cols + c, [k, q + k, 2 * q + k, 3 * q + k]] = (
                    np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega))
    return pe


def roformer_matrix(m, thetas):
    """RoFormer eq. 15: the block-diagonal R_{Θ,m}, block i = [[cos mθ_i, -sin mθ_i], [sin mθ_i, cos mθ_i]]."""
    d = 2 * len(thetas)
    rot = np.zeros((d, d))
    for i, theta in enumerate(thetas):
        c, s = np.cos(m * theta), np.sin(m * theta)
        rot[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[c, -s], [s, c]]
    return rot


def roformer_thetas(d, base):
    return [base ** (-2 * (i - 1) / d) for i in range(1, d // 2 + 1)]     # θ_i, i = 1..d/2


def axial_matrix(r, c, d, base):
    """RoPE-ViT's RoPE-Axial: the first d/4 pairs turn by the column (x), the next d/4 by the
    row (y), frequencies θ_t = base^(-t/(d/4)), t = 0..d/4-1."""
    thetas = [base ** (-t / (d // 4)) for t in range(d // 4)]
    rot = np.zeros((d, d))
    for pair, angle in enumerate([c * t for t in thetas] + [r * t for t in thetas]):
        co, si = np.cos(angle), np.sin(angle)
        rot[2 * pair:2 * pair + 2, 2 * pair:2 * pair + 2] = [[co, -si], [si, co]]
    return rot


# --- tables and rotations ------------------------------------------------------------------

def test_sinusoid_1d_is_the_transformer_table():
    np.testing.assert_allclose(positions.sinusoid_1d(50, 16), transformer_table(50, 16), atol=1e-6)


def test_sinusoid_2d_is_maes_table_column_half_first():
    table = positions.sinusoid_2d(3, 5, 16)
    np.testing.assert_allclose(table, mae_table(3, 5, 16), atol=1e-6)
    # Patches in one column share the first half; patches in one row share the second.
    grid = table.reshape(3, 5, 16)
    assert np.allclose(grid[0, :, :8], grid[2, :, :8]) and not np.allclose(grid[0, 0, :8], grid[0, 1, :8])
    assert np.allclose(grid[:, 0, 8:], grid[:, 4, 8:]) and not np.allclose(grid[0, 0, 8:], grid[1, 0, 8:])


def test_rotary_1d_rotation_is_roformers_matrix():
    d, base, length = 8, 10000.0, 40
    x = np.random.default_rng(0).normal(size=(2, length, 3, d)).astype(np.float32)
    got = np.asarray(positions.rotate(jnp.asarray(x), positions.rotary_1d(length, d, base)))
    want = np.stack([np.einsum("ij,bhj->bhi", roformer_matrix(m, roformer_thetas(d, base)), x[:, m])
                     for m in range(length)], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rotary_2d_is_axial_column_half_first():
    d, base, rows, cols = 8, 100.0, 3, 4
    x = np.random.default_rng(1).normal(size=(1, rows * cols, 2, d)).astype(np.float32)
    got = np.asarray(positions.rotate(jnp.asarray(x), positions.rotary_2d(rows, cols, d, base)))
    want = np.stack([np.einsum("ij,bhj->bhi", axial_matrix(n // cols, n % cols, d, base), x[:, n])
                     for n in range(rows * cols)], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _scores(q, k, angles_q, angles_k):
    return np.einsum("qhd,khd->hqk", np.asarray(positions.rotate(q[None], angles_q))[0],
                     np.asarray(positions.rotate(k[None], angles_k))[0])


def test_rotary_scores_depend_only_on_the_offset():
    rng = np.random.default_rng(2)
    d, length, shift = 16, 12, 37
    q, k = (jnp.asarray(rng.normal(size=(length, 2, d)), jnp.float32) for _ in range(2))
    table = positions.rotary_1d(length + shift, d, 10000.0)
    base = _scores(q, k, table[:length], table[:length])
    np.testing.assert_allclose(_scores(q, k, table[shift:], table[shift:]), base, atol=2e-4)
    # Shifting the queries alone changes the offsets, and the scores.
    assert np.abs(_scores(q, k, table[shift:], table[:length]) - base).max() > 0.1
    # 2-D: every patch moved by the same (rows, cols) gives the same scores.
    grid = positions.rotary_2d(9, 9, d, 10000.0).reshape(9, 9, d // 2)
    a, b = grid[:4, :5].reshape(20, -1), grid[3:7, 2:7].reshape(20, -1)
    q, k = (jnp.asarray(rng.normal(size=(20, 2, d)), jnp.float32) for _ in range(2))
    np.testing.assert_allclose(_scores(q, k, b, b), _scores(q, k, a, a), atol=2e-4)
    assert np.abs(_scores(q, k, b, a) - _scores(q, k, a, a)).max() > 0.1


def test_attention_rotates_queries_at_their_own_rows():
    """The module's rotary attention equals numpy softmax attention of R_m q and R_n k; with
    `select` the selected query rows keep their own positions."""
    rng = np.random.default_rng(3)
    length, width, heads = 7, 16, 2
    d = width // heads
    x = rng.normal(size=(2, length, width)).astype(np.float32)
    module = Attention(heads, fused_qkv=False, backend="einsum")
    rope = positions.rotary_1d(length, d, 10000.0)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), x, rope=rope)["params"])
    p = jax.tree.map(np.asarray, params)
    rots = [roformer_matrix(m, roformer_thetas(d, 10000.0)) for m in range(length)]
    q, k, v = (np.einsum("ble,ehd->blhd", x, p[f"{n}_kernel"]) + p[f"{n}_bias"] for n in "qkv")
    q = np.stack([np.einsum("ij,bhj->bhi", rots[m], q[:, m]) for m in range(length)], axis=1)
    k = np.stack([np.einsum("ij,bhj->bhi", rots[m], k[:, m]) for m in range(length)], axis=1)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    y = np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v).reshape(2, length, width)
    want = y @ p["out_kernel"].reshape(width, width) + p["out_bias"]
    np.testing.assert_allclose(module.apply({"params": params}, x, rope=rope), want, atol=1e-4)
    select = np.array([[5, 1], [0, 6]])
    np.testing.assert_allclose(module.apply({"params": params}, x, select=select, rope=rope),
                               np.take_along_axis(want, select[:, :, None], axis=1), atol=1e-4)


# --- the towers -----------------------------------------------------------------------------

def _text(position, **kw):
    c = tiny_config("mlm")
    c.model.update(**kw)
    c.model.text.position = position
    return TextTransformer(options.from_config(c.model, "text"))


def _vit(position, tower=(), **kw):
    c = tiny_config("clip")
    c.model.update(**kw)
    c.model.image.update(position=position, **dict(tower))
    return ViT(options.from_config(c.model, "image"))


TOKENS = np.random.default_rng(4).integers(5, 60, (3, 8)).astype(np.int32)
IMAGES = np.random.default_rng(5).normal(size=(2, 8, 12, 1)).astype(np.float32)   # 2 x 3 patches


def test_sinusoidal_towers_add_the_tables_in_place_of_the_learned_ones():
    """A learned tower whose table is set to the numpy reference (the class token's row: zeros)
    computes what the sinusoidal tower does; text tokens are scaled by sqrt(width), as the
    Transformer's (their init std is width^-0.5 there)."""
    text, learned = _text("sinusoidal"), _text("learned")
    fixed = nn.unbox(text.init(jax.random.PRNGKey(0), TOKENS)["params"])
    assert "pos_embedding" not in fixed
    table = fixed["token_embed"]["embedding"]
    assert abs(float(table.std()) - 16 ** -0.5) < 0.02
    as_learned = dict(fixed, pos_embedding=jnp.asarray(transformer_table(8, 16), jnp.float32),
                      token_embed={"embedding": table * 4.0})          # sqrt(16)
    assert as_learned.keys() == nn.unbox(learned.init(jax.random.PRNGKey(0), TOKENS)["params"]).keys()
    np.testing.assert_allclose(text.apply({"params": fixed}, TOKENS)[1],
                               learned.apply({"params": as_learned}, TOKENS)[1], atol=1e-5)
    vit, learned = _vit("sinusoidal"), _vit("learned")
    params = nn.unbox(learned.init(jax.random.PRNGKey(0), IMAGES)["params"])
    fixed = {k: v for k, v in params.items() if k != "pos_embedding"}
    table = np.concatenate([np.zeros((1, 16)), mae_table(2, 3, 16)])
    as_learned = dict(params, pos_embedding=jnp.asarray(table, jnp.float32))
    np.testing.assert_allclose(vit.apply({"params": fixed}, IMAGES),
                               learned.apply({"params": as_learned}, IMAGES), atol=1e-5)


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "full")])
def test_rotary_towers_pruned_last_layer_scan_and_remat_agree(scan, remat):
    """Rotary text: the last layer at chosen rows equals the full sequence there, scanned or
    not, with remat; ViT: the class-token-only last layer equals the unpruned one."""
    text = _text("rotary", scan=scan, remat=remat)
    params = text.init(jax.random.PRNGKey(0), TOKENS)["params"]
    assert "pos_embedding" not in params
    full = np.asarray(text.apply({"params": params}, TOKENS)[1])
    rows = np.array([[0, 5], [7, 2], [3, 3]])
    np.testing.assert_allclose(text.apply({"params": params}, TOKENS, rows, method="at_positions"),
                               np.take_along_axis(full, rows[:, :, None], axis=1), atol=1e-5)
    # Rotary is applied: swapping two tokens does more than swap their outputs.
    swapped = np.asarray(text.apply({"params": params}, TOKENS[:, [1, 0, *range(2, 8)]])[1])
    assert np.abs(swapped[:, 2:] - full[:, 2:]).max() > 1e-3
    vit = _vit("rotary", scan=scan, remat=remat)
    params = vit.init(jax.random.PRNGKey(0), IMAGES)["params"]
    unpruned = _vit("rotary", scan=scan, remat=remat, prune_last_layer=False)
    np.testing.assert_allclose(vit.apply({"params": params}, IMAGES),
                               unpruned.apply({"params": params}, IMAGES), atol=1e-5)


def test_rotary_gradients_flow_under_scan_and_remat():
    text = _text("rotary", scan=True, remat="full")
    params = text.init(jax.random.PRNGKey(0), TOKENS)["params"]
    grads = jax.grad(lambda p: text.apply({"params": p}, TOKENS)[1].sum())(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert np.abs(nn.unbox(grads)["encoder"]["layers"]["attn"]["qkv_kernel"]).max() > 0


def test_learned_default_is_the_model_of_a_config_without_the_option():
    """Configs saved before the option (no position / rope_base keys) build the same params
    and compute the same outputs, bit for bit."""
    config = tiny_config("clip")
    old = tiny_config("clip")
    for tower in ("image", "text"):
        del old.model[tower]["position"], old.model[tower]["rope_base"]

    def run(c):
        task = tasks.get(c, TOKENIZER)
        model = task.build_model()
        method, args = task.init_args()
        params = nn.unbox(jax.jit(model.init, static_argnames="method")(
            jax.random.PRNGKey(0), *args, method=method)["params"])
        batch = tiny_batch(c, batch_size=4)
        return layout.flatten(params), jax.jit(model.apply)({"params": params}, batch["image"], batch["text"])

    (params, out), (old_params, old_out) = run(config), run(old)
    assert params.keys() == old_params.keys()
    assert {"image/pos_embedding", "text/pos_embedding"} <= params.keys()
    assert all(np.array_equal(params[n], old_params[n]) for n in params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(old_out)))


def test_config_choices_are_the_encodings_and_a_bad_one_is_one_error():
    for tower in ("image", "text"):
        assert config_lib.CHOICES[f"model.{tower}.position"] == positions.POSITIONS
    with pytest.raises(config_lib.ConfigError, match="'model.text.position' is 'alibi'; valid choices: "
                                                     "learned, sinusoidal, rotary"):
        config_lib.load(os.path.join(ROOT, "configs", "smoke_mlm.py"), ["--config.model.text.position=alibi"])
    with pytest.raises(ValueError, match=r"model.image.position='rotary' needs the head dim.*\(6\) "
                                         r"divisible by 4"):
        _vit("rotary", tower=dict(num_heads=8, width=48)).init(jax.random.PRNGKey(0), IMAGES)


@pytest.mark.parametrize("family,tower,position", [("hf_bert", "text", "rotary"),
                                                   ("hf_bert", "text", "sinusoidal"),
                                                   ("open_clip", "image", "sinusoidal"),
                                                   ("open_clip", "text", "rotary")])
def test_an_export_that_holds_learned_tables_only_refuses_other_encodings(family, tower, position):
    config = tiny_config("mlm" if family == "hf_bert" else "clip")
    config.model[tower].position = position
    params = layout.unflatten({n: np.zeros(s.shape, s.dtype)
                               for n, s in export.abstract_params(config).items()})
    with pytest.raises(ValueError) as e:
        export.to_reference(family, config, params)
    message = str(e.value)
    assert f"model.{tower}.position is '{position}'" in message and "--format params" in message
    assert "\n" not in message


# --- training ---------------------------------------------------------------------------------

@pytest.mark.acceptance   # ~2.5-4 min each unloaded: by hand (learned is test_smoke's, in CI)
@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_each_encoding_trains_the_smoke_mlm(tmp_path, data_dir, position):   # noqa: F811
    """configs/smoke_mlm.py with the encoding: held-out masked-token accuracy at least twice
    the most-frequent-token baseline's. Measured (2 shared CPU cores, 2026-12-03): learned
    0.135 in 473 s, sinusoidal 0.147 in 359 s, rotary 0.267 in 804 s; baseline 0.064."""
    workdir = str(tmp_path / "run")
    _mmjax("train", "--workdir", workdir, "--data_dir", data_dir, "--config", "configs/smoke_mlm.py",
           f"--config.model.text.position={position}")
    final = _final_eval(workdir)
    assert final["eval/mlm/accuracy"] >= 2 * final["eval/mlm/baseline_accuracy"], final
