"""Text tower: token (+ type) + position embeddings and an encoder; CLIP- or BERT-style."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.options import TextOptions
from mmjax.nn.transformer import Encoder, layer_norm


class TextTransformer(nn.Module):
    """Tokens [b, l] -> (pooled [b, width], sequence [b, l, width]).

    CLIP: causal=True, pre_norm=True, final_norm=True, pool='eot' (the position of the largest
    id, which is end-of-text). BERT: causal=False, pre_norm=False, embed_norm=True,
    type_vocab_size=2, pool='first' ([CLS]); padding (id `pad_id`) is masked out of attention.
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
        o = self.opts
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embedding[:length].astype(o.dtype)
        if o.type_vocab_size:
            x = x + self.type_embed(jnp.zeros_like(tokens) if token_types is None else token_types)
        if o.embed_norm:
            x = self.ln_embed(x)
        padding_mask = None if o.causal else tokens != o.pad_id
        x = self.encoder(x, padding_mask)
        if o.final_norm:
            x = self.ln_final(x)
        if o.pool == "eot":
            pooled = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]
        elif o.pool == "first":
            pooled = x[:, 0]
        elif o.pool == "mean":   # over the real tokens (sentence-transformers' pooling)
            real = (tokens != o.pad_id)[..., None].astype(x.dtype)
            pooled = (x * real).sum(axis=1) / jnp.maximum(real.sum(axis=1), 1)
        else:
            raise ValueError(f"text pool {o.pool!r} unknown; valid: 'eot', 'first', 'mean'")
        return pooled, x

    def word_embeddings(self):
        """The [vocab, width] token table (the MLM decoder is tied to it)."""
        return self.token_embed.embedding
