"""Text pooling at the end-of-text token: the tokenizer's id reaches the model, and the pooled
vector is the hidden state at the first end-of-text position, for CLIP's BPE and WordPiece."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import tasks
from mmjax.data.tokenizers import ClipTokenizer, WordPieceTokenizer
from mmjax.nn import options
from mmjax.nn.text import TextTransformer, eot_positions

TOL = dict(rtol=1e-5, atol=1e-5)
TEXTS = ["a photo of a cat", "two dogs play in the park by the river",
         "the river", "a dog, a cat and a bird sat on the old wall by the river in the park"]


@functools.cache
def _tokenizer(name):
    if name == "clip_bpe":
        return ClipTokenizer()
    return WordPieceTokenizer.train(TEXTS * 3, vocab_size=80)


def _model_config(tokenizer, **text):
    c = config_lib.defaults()
    c.model.update(scan=False)
    c.model.text.update(vocab_size=tokenizer.vocab_size, context_length=16, width=16, depth=1,
                        num_heads=2, mlp_dim=32, **text)
    return c


@functools.cache
def _tower(name):
    """A tiny text tower of tokenizer `name` whose options come from the config and the
    tokenizer, as tasks build it (CLIP-style causal for BPE, bidirectional for WordPiece);
    (tower, params, jitted (params, tokens) -> (pooled, sequence, `pooled` method))."""
    tokenizer = _tokenizer(name)
    config = _model_config(tokenizer, pool="eot", causal=name == "clip_bpe")
    tower = TextTransformer(options.from_config(config.model, "text", tokenizer))
    # Random params of the right shapes without compiling init (eval_shape only traces it).
    shapes = nn.unbox(jax.eval_shape(tower.init, jax.random.PRNGKey(0), np.zeros((1, 16), np.int32)))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (float(path[-1].key == "scale") + rng.normal(0, 0.2, s.shape)).astype(s.dtype),
        shapes["params"])

    @jax.jit
    def forward(params, tokens):
        pooled, seq = tower.apply({"params": params}, tokens)
        return pooled, seq, tower.apply({"params": params}, tokens, method="pooled")
    return tower, params, forward


def _np_pool_index(tokens, eot, pad):
    """Where pooling reads: the first `eot`; a row without one, its last non-pad token (0 if none)."""
    first = np.argmax(tokens == eot, axis=1)
    positions = np.arange(tokens.shape[1])
    last_real = np.where(tokens != pad, positions, 0).max(axis=1)
    return np.where((tokens == eot).any(axis=1), first, last_real)


@pytest.mark.parametrize("name", ["clip_bpe", "wordpiece"])
def test_eot_pooling_reads_the_first_end_of_text_token(name):
    tok = _tokenizer(name)
    tower, params, forward = _tower(name)
    assert tower.opts.eot_id == tok.eot_id == (49407 if name == "clip_bpe" else tok.sep_id)
    tokens = tok.encode(TEXTS, 16)
    # Row 3 is cut to the context: its end-of-text is the last position. Row 1 holds a second
    # end-of-text inside the row (two texts joined): pooling reads the first.
    tokens[1, -2] = tok.eot_id
    index = np.argmax(tokens == tok.eot_id, axis=1)   # the numpy reference
    assert len(set(index.tolist())) == len(TEXTS) and index[3] == 15
    pooled, seq, pooled_only = forward(params, tokens)
    np.testing.assert_allclose(pooled, np.asarray(seq)[np.arange(len(TEXTS)), index], **TOL)
    # `pooled` computes the last layer at that row only: the same vector.
    np.testing.assert_allclose(pooled_only, pooled, **TOL)
    if name == "clip_bpe":   # CLIP's EOT is its largest id: argmax, as open_clip pools, agrees
        np.testing.assert_array_equal(np.argmax(tokens, axis=1), index)
    else:                    # [SEP] is id 3: argmax would pool at a content token, another vector
        wrong = np.argmax(tokens, axis=1)
        assert (wrong != index).all()
        assert np.abs(pooled - np.asarray(seq)[np.arange(len(TEXTS)), wrong]).max(axis=1).min() > 1e-3


@pytest.mark.parametrize("name", ["clip_bpe", "wordpiece"])
def test_a_row_without_end_of_text_pools_at_its_last_real_token(name):
    tok = _tokenizer(name)
    _, params, forward = _tower(name)
    tokens = tok.encode(TEXTS, 16)
    tokens[0][tokens[0] == tok.eot_id] = tok.pad_id       # end-of-text dropped: padding after
    tokens[1, :] = tok.pad_id                             # padding only
    index = _np_pool_index(tokens, tok.eot_id, tok.pad_id)
    assert index[0] == len(tok.ids(TEXTS[:1])[0]) and index[1] == 0   # [start] + the text
    np.testing.assert_array_equal(eot_positions(tokens, tok.eot_id, tok.pad_id), index)
    pooled, seq, pooled_only = forward(params, tokens)
    np.testing.assert_allclose(pooled, np.asarray(seq)[np.arange(len(TEXTS)), index], **TOL)
    np.testing.assert_allclose(pooled_only, pooled, **TOL)


def test_without_a_tokenizer_eot_is_the_last_id_as_in_clip():
    """Shape-only uses (export, `tasks.get(config, None)`) and open_clip imports: CLIP's
    convention, the vocabulary's largest id, which is what open_clip's argmax finds."""
    opts = options.from_config(_model_config(_tokenizer("clip_bpe")).model, "text", None)
    assert opts.eot_id is None
    tower = TextTransformer(opts.replace(vocab_size=50))
    tokens = np.array([[48, 5, 49, 7, 49, 0], [48, 7, 8, 9, 10, 49]], np.int32)
    np.testing.assert_array_equal(tower.pool_positions(tokens)[:, 0], np.argmax(tokens, axis=1))


@pytest.mark.parametrize("task,text", [("clip", {}), ("mlm", {}),
                                       ("classify", dict(pool="eot"))])
def test_tasks_give_the_tokenizers_eot_to_the_text_tower(task, text):
    tok = _tokenizer("wordpiece")
    c = _model_config(tok, **text)
    c.task, c.data.tokenizer = task, "wordpiece"
    c.model.classify.tower = "text"
    assert tasks.get(c, tok).build_model().text.opts.eot_id == tok.sep_id
