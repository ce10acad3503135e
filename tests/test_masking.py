"""BERT masking: candidate choice, per-sequence counts, 80/10/10 statistics, jit and rng."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mmjax.masking import bert_mask, gather_positions  # noqa: E402

VOCAB = 60
PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
SPECIAL = (PAD, CLS, SEP, MASK, UNK)
MAX_PRED = 6
KW = dict(vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIAL, max_predictions=MAX_PRED)
STATIC = tuple(KW) + ('mask_rate', 'random_rate', 'keep_rate')
jit_mask = jax.jit(bert_mask, static_argnames=STATIC)


def _tokens(seed, b=64, length=32):
    """[CLS] regular tokens [SEP] then padding; lengths vary, incl. 0 and 1 regular tokens."""
    rng = np.random.default_rng(seed)
    toks = np.zeros((b, length), np.int32)
    for i in range(b):
        n = [0, 1, 3, length - 2][i] if i < 4 else rng.integers(0, length - 1)
        toks[i, 0] = CLS
        toks[i, 1:n + 1] = rng.integers(len(SPECIAL), VOCAB, size=n)
        toks[i, n + 1] = SEP
        if i % 5 == 0 and n > 2:  # an UNK and a stray MASK inside the text
            toks[i, 2], toks[i, 3] = UNK, MASK
    return toks


def _expected_count(tokens):
    cand = ~np.isin(tokens, SPECIAL)
    c = cand.sum(-1)
    return np.where(c > 0, np.minimum(MAX_PRED, np.maximum(1, np.round(0.15 * c))), 0), cand


def _np(out):
    return {k: np.asarray(v) for k, v in out.items()}


def test_shapes_dtypes_and_structure():
    toks = _tokens(0)
    out = _np(jit_mask(jax.random.key(0), toks, **KW))
    b, length = toks.shape
    assert out['inputs'].shape == (b, length) and out['inputs'].dtype == np.int32
    for k, dt in [('positions', np.int32), ('labels', np.int32), ('weights', np.float32)]:
        assert out[k].shape == (b, MAX_PRED) and out[k].dtype == dt, k

    want_n, cand = _expected_count(toks)
    w, pos, lab = out['weights'], out['positions'], out['labels']
    np.testing.assert_array_equal(w.sum(-1), want_n)
    for i in range(b):
        n = int(want_n[i])
        assert np.all(w[i, :n] == 1) and np.all(w[i, n:] == 0)
        real = pos[i, :n]
        assert len(set(real.tolist())) == n                       # no repeats
        assert np.all(cand[i, real])                              # never special / padding
        assert np.all(pos[i, n:] == 0) and np.all(lab[i, n:] == 0)
        np.testing.assert_array_equal(lab[i, :n], toks[i, real])  # labels = originals
        # Only chosen positions change.
        changed = np.nonzero(out['inputs'][i] != toks[i])[0]
        assert set(changed.tolist()) <= set(real.tolist())
    assert want_n[0] == 0 and want_n[1] == 1                    # edge cases present


def test_gather_positions():
    toks = _tokens(1, b=8, length=16)
    out = jit_mask(jax.random.key(1), toks, **KW)
    x = np.random.default_rng(0).normal(size=(8, 16, 5)).astype(np.float32)
    got = np.asarray(gather_positions(jnp.asarray(x), out['positions']))
    pos = np.asarray(out['positions'])
    assert got.shape == (8, MAX_PRED, 5)
    for i in range(8):
        np.testing.assert_array_equal(got[i], x[i, pos[i]])
    # Rank-2 inputs work too: gathering the original tokens gives the labels.
    w = np.asarray(out['weights']) > 0
    got_tok = np.asarray(gather_positions(jnp.asarray(toks), out['positions']))
    np.testing.assert_array_equal(got_tok[w], np.asarray(out['labels'])[w])


def test_80_10_10_statistics():
    # Long sequences, high cap: ~5,000 predictions in one call.
    toks = _tokens(2, b=512, length=128)
    kw = dict(KW, max_predictions=32)
    out = _np(jit_mask(jax.random.key(2), toks, **kw))
    sel = out['weights'] > 0
    orig = out['labels'][sel]
    new = np.take_along_axis(out['inputs'], out['positions'], 1)[sel]
    total = sel.sum()
    assert total > 4000

    is_mask = new == MASK
    is_same = new == orig
    is_random = ~is_mask & ~is_same
    assert not np.any(np.isin(new[is_random], SPECIAL))      # random ids are never special
    assert np.all((new >= 0) & (new < VOCAB))
    assert not np.any(np.isin(new[~is_mask], SPECIAL))

    num_regular = VOCAB - len(SPECIAL)
    # A random draw equals the original with probability 1 / num_regular.
    expect = {'mask': 0.8, 'random': 0.1 * (1 - 1 / num_regular),
              'same': 0.1 + 0.1 / num_regular}
    for name, hits in [('mask', is_mask), ('random', is_random), ('same', is_same)]:
        p = expect[name]
        sigma = np.sqrt(p * (1 - p) / total)
        assert abs(hits.mean() - p) < 5 * sigma, (name, hits.mean(), p)

    # Positions are uniform among candidates: chosen fraction of candidates ~ constant
    # across the first and second half of the text.
    lengths = (~np.isin(toks, SPECIAL)).sum(-1)
    long_rows = lengths >= 64
    pos = out['positions'][long_rows][sel[long_rows]]
    first_half = (pos >= 1) & (pos <= 32)
    second_half = (pos >= 33) & (pos <= 64)
    a, c = first_half.sum(), second_half.sum()
    assert abs(a - c) < 5 * np.sqrt(a + c), (a, c)


def test_custom_rates():
    toks = _tokens(3, b=128, length=64)
    kw = dict(KW, max_predictions=16, mask_rate=0.3, random_rate=0.0, keep_rate=0.5)
    out = _np(jit_mask(jax.random.key(3), toks, **kw))
    cand = ~np.isin(toks, SPECIAL)
    c = cand.sum(-1)
    want = np.where(c > 0, np.minimum(16, np.maximum(1, np.round(0.3 * c))), 0)
    np.testing.assert_array_equal(out['weights'].sum(-1), want)
    sel = out['weights'] > 0
    new = np.take_along_axis(out['inputs'], out['positions'], 1)[sel]
    orig = out['labels'][sel]
    assert np.all((new == MASK) | (new == orig))              # no random replacements
    p, total = 0.5, sel.sum()
    assert abs((new == MASK).mean() - p) < 5 * np.sqrt(p * (1 - p) / total)


def test_rng_determinism_and_variation():
    toks = _tokens(4)
    a = _np(jit_mask(jax.random.key(5), toks, **KW))
    b = _np(jit_mask(jax.random.key(5), toks, **KW))
    c = _np(jit_mask(jax.random.key(6), toks, **KW))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a['positions'], c['positions'])
    assert not np.array_equal(a['inputs'], c['inputs'])
    # Eager and jitted agree.
    e = _np(bert_mask(jax.random.key(5), toks, **KW))
    for k in a:
        np.testing.assert_array_equal(a[k], e[k])


def test_max_predictions_larger_than_length():
    toks = _tokens(5, b=4, length=8)
    out = _np(jit_mask(jax.random.key(0), toks, **dict(KW, max_predictions=12, mask_rate=1.0)))
    want = np.minimum(12, np.maximum(1, (~np.isin(toks, SPECIAL)).sum(-1)))
    want = np.where((~np.isin(toks, SPECIAL)).sum(-1) > 0, want, 0)
    np.testing.assert_array_equal(out['weights'].sum(-1), want)
    assert out['positions'].shape == (4, 12)


def test_all_special_vocab_rejected():
    with pytest.raises(ValueError):
        bert_mask(jax.random.key(0), np.zeros((1, 4), np.int32), vocab_size=2, mask_id=1,
                  special_ids=(0, 1), max_predictions=2)
