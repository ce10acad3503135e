"""Text tower: token (+ type) + position embeddings or rotary angles, an encoder; CLIP/BERT-style."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn import positions
from mmjax.nn.attention import take_rows
from mmjax.nn.embed import Embed
from mmjax.nn.init import logical, normal_init
from mmjax.nn.options import TextOptions
from mmjax.nn.transformer import Encoder, layer_norm


def eot_positions(tokens, eot_id: int, pad_id: int):
    """[b] int32: where pool='eot' reads each row of tokens [b, l], the FIRST `eot_id` in it
    (numpy: `np.argmax(tokens == eot_id, axis=1)`). A row without one (cut short by
    something other than our tokenizers, which always end a row with it) reads its last
    non-padding token, the end of the text it holds; a row of padding only reads position 0.

    CLIP's BPE puts EOT at its largest id, so this is `argmax(tokens)` there, as open_clip
    pools; WordPiece's end-of-text is [SEP], which no argmax finds.
    """
    is_eot = tokens == eot_id
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    last_real = jnp.max(jnp.where(tokens != pad_id, positions, 0), axis=-1)
    return jnp.where(is_eot.any(axis=-1), jnp.argmax(is_eot, axis=-1).astype(jnp.int32), last_real)


class TextTransformer(nn.Module):
    """Tokens [b, l] -> (pooled [b, width], sequence [b, l, width]).

    CLIP: causal=True, pre_norm=True, final_norm=True, pool='eot' (the first end-of-text
    token, `opts.eot_id`: the tokenizer's, see `eot_positions`). BERT: causal=False,
    pre_norm=False, embed_norm=True, type_vocab_size=2, pool='first' ([CLS]); padding (id
    `pad_id`) is masked out of attention. `pooled` and `at_positions` compute the last layer
    only at the rows they return. `opts.position`: a learned table ('pos_embedding'), the
    fixed sinusoids, or rotary queries and keys (nn.positions).
    """

    opts: TextOptions

    def setup(self):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        positions.check(o.position, "text")
        # Under the fixed sinusoids, tokens start at unit scale as theirs: init std width^-0.5,
        # times sqrt(width) in `features` (Vaswani et al. §3.4; fairseq's Embedding + embed_scale).
        std = o.width ** -0.5 if o.position == "sinusoidal" else 0.02
        self.token_embed = Embed(o.vocab_size, o.width, **kw,
                                 embedding_init=logical(normal_init(std), ("vocab", "embed")))
        if o.position == "learned":
            self.pos_embedding = self.param("pos_embedding", logical(normal_init(0.01), ("length", "embed")),
                                            (o.context_length, o.width), o.param_dtype)
        if o.type_vocab_size:
            self.type_embed = Embed(o.type_vocab_size, o.width, **kw,
                                    embedding_init=logical(normal_init(0.02), (None, "embed")))
        if o.embed_norm:
            self.ln_embed = layer_norm(o.norm_eps, **kw)
        self.encoder = Encoder(o)
        if o.final_norm:
            self.ln_final = layer_norm(o.norm_eps, **kw)

    def __call__(self, tokens, token_types=None):
        """(pooled [b, width], sequence [b, l, width]): every position of the last layer."""
        x = self.features(tokens, token_types)
        return self._pool(x, tokens), x

    def pooled(self, tokens, token_types=None):
        """Pooled features [b, width]; 'eot' and 'first' run the last layer at that row only."""
        select = self.pool_positions(tokens)
        if select is None:
            return self(tokens, token_types)[0]
        return self.features(tokens, token_types, select)[:, 0]

    def at_positions(self, tokens, positions, token_types=None):
        """Features at positions [b, m] -> [b, m, width]; the last layer runs at those rows only."""
        return self.features(tokens, token_types, positions)

    def fused(self, tokens, context, select=None, causal=False):
        """Hidden states [b, l | n, width] of tokens [b, l] whose every block also cross-attends
        to `context` [b, n_img, c] (a fusion encoder in BLIP's layout); bidirectional over the
        real tokens even in a causal tower, unless `causal` (a captioner's decoder pass).
        `select` [b, n]: only those rows (last layer pruned)."""
        return self.features(tokens, select=select, context=context, causal=causal)

    def features(self, tokens, token_types=None, select=None, mask=None, context=None,
                 causal=None):
        """Final hidden states [b, l, width], or [b, n, width] at positions `select` [b, n].
        `mask`: packed documents besides causality, ids int [b, l] (a row sees its own
        document's) or the allowed (query, key) pairs bool [b, l, l].
        `context` [b, n_img, c]: see `fused`. `causal`: overrides the tower's (None: its own
        without a context, bidirectional with one)."""
        o = self.opts
        x, rope = self.embed(tokens, token_types)
        if causal is None:
            causal = o.causal and context is None
        padding_mask = mask if mask is not None else None if causal else tokens != o.pad_id
        x = self.encoder(x, padding_mask, select, rope, context=context,
                         causal=None if causal == o.causal else causal)
        return self.final(x)

    def embed(self, tokens, token_types=None, rows=None, length=None):
        """(the encoder's input [b, n, width], rotary angles or None) of tokens [b, n] at rows
        [b, n] (None: rows 0..n-1) of a sequence of `length` rows (default n; a decoder's cache
        length, which sizes the fixed tables). Angles: [n, d/2], or [b, n, d/2] at `rows`. The
        input is token (+ position table) (+ type) embeddings, normed when `embed_norm`
        (ELECTRA's generator reads the discriminator's)."""
        o = self.opts
        length = length or tokens.shape[1]
        at = (lambda table: table[:tokens.shape[1]]) if rows is None else (
            lambda table: jnp.asarray(table)[rows])
        rope = None
        if o.position == "learned":
            x = self.token_embed(tokens) + at(self.pos_embedding).astype(o.dtype)
        elif o.position == "sinusoidal":   # tokens x sqrt(width), see setup
            x = (self.token_embed(tokens) * jnp.sqrt(o.width).astype(o.dtype)
                 + jnp.asarray(at(positions.sinusoid_1d(length, o.width)), o.dtype))
        else:   # rotary: no table; every layer rotates queries and keys by these angles
            x = self.token_embed(tokens)
            rope = at(positions.rotary_1d(length, o.width // o.num_heads, o.rope_base))
        if o.type_vocab_size:
            x = x + self.type_embed(jnp.zeros_like(tokens) if token_types is None else token_types)
        if o.embed_norm:
            x = self.ln_embed(x)
        return x, rope

    def final(self, x):
        """The last layer's output [..., width] -> the tower's hidden states (ln_final or not)."""
        return self.ln_final(x) if self.opts.final_norm else x

    def pool_positions(self, tokens):
        """The one position [b, 1] that pooling reads ('eot': `eot_positions`; 'first': 0;
        'last': the row's last, padding included, as SigLIP reads it), or
        None when it reads every position ('mean')."""
        o = self.opts
        if o.pool not in ("eot", "first", "last", "mean"):
            raise ValueError(f"text pool {o.pool!r} unknown; valid: 'eot', 'first', 'last', 'mean'")
        if o.pool == "last":   # SigLIP's: the last position of the padded row
            return jnp.full((tokens.shape[0], 1), tokens.shape[1] - 1, jnp.int32)
        if o.pool == "eot":
            eot = o.vocab_size - 1 if o.eot_id is None else o.eot_id
            return eot_positions(tokens, eot, o.pad_id)[:, None]
        return jnp.zeros((tokens.shape[0], 1), jnp.int32) if o.pool == "first" else None

    def _pool(self, x, tokens):
        """Pooled features [b, width] of the whole sequence x [b, l, width]."""
        select = self.pool_positions(tokens)
        if select is not None:
            return take_rows(x, select)[:, 0]
        real = (tokens != self.opts.pad_id)[..., None].astype(x.dtype)   # 'mean' over real tokens
        return (x * real).sum(axis=1) / jnp.maximum(real.sum(axis=1), 1)

    def word_embeddings(self):
        """The [vocab, width] token table (the MLM decoder is tied to it)."""
        return self.token_embed.embedding
