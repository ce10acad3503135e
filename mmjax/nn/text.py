"""Text tower: token (+ type) + position embeddings and an encoder; CLIP- or BERT-style."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.attention import take_rows
from mmjax.nn.init import logical, normal_init
from mmjax.nn.options import TextOptions
from mmjax.nn.transformer import Encoder, layer_norm


class TextTransformer(nn.Module):
    """Tokens [b, l] -> (pooled [b, width], sequence [b, l, width]).

    CLIP: causal=True, pre_norm=True, final_norm=True, pool='eot' (the position of the largest
    id, which is end-of-text). BERT: causal=False, pre_norm=False, embed_norm=True,
    type_vocab_size=2, pool='first' ([CLS]); padding (id `pad_id`) is masked out of attention.
    `pooled` and `at_positions` compute the last layer only at the rows they return.
    """

    opts: TextOptions

    def setup(self):
        o = self.opts
        kw = dict(dtype=o.dtype, param_dtype=o.param_dtype)
        self.token_embed = nn.Embed(o.vocab_size, o.width, **kw,
                                    embedding_init=logical(normal_init(0.02), ("vocab", "embed")))
        self.pos_embedding = self.param("pos_embedding", logical(normal_init(0.01), ("length", "embed")),
                                        (o.context_length, o.width), o.param_dtype)
        if o.type_vocab_size:
            self.type_embed = nn.Embed(o.type_vocab_size, o.width, **kw,
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

    def features(self, tokens, token_types=None, select=None):
        """Final hidden states [b, l, width], or [b, n, width] at positions `select` [b, n]."""
        o = self.opts
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embedding[:length].astype(o.dtype)
        if o.type_vocab_size:
            x = x + self.type_embed(jnp.zeros_like(tokens) if token_types is None else token_types)
        if o.embed_norm:
            x = self.ln_embed(x)
        padding_mask = None if o.causal else tokens != o.pad_id
        x = self.encoder(x, padding_mask, select)
        return self.ln_final(x) if o.final_norm else x

    def pool_positions(self, tokens):
        """The one position [b, 1] that pooling reads ('eot': the largest id; 'first': 0), or
        None when it reads every position ('mean')."""
        pool = self.opts.pool
        if pool not in ("eot", "first", "mean"):
            raise ValueError(f"text pool {pool!r} unknown; valid: 'eot', 'first', 'mean'")
        if pool == "eot":
            return jnp.argmax(tokens, axis=-1)[:, None]
        return jnp.zeros((tokens.shape[0], 1), jnp.int32) if pool == "first" else None

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
