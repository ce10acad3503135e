"""Text tower: token (+ type) + position embeddings and an encoder; CLIP- or BERT-style."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.transformer import Encoder, layer_norm


class TextTransformer(nn.Module):
    """Tokens [b, l] -> (pooled [b, width], sequence [b, l, width]).

    CLIP: causal=True, pre_norm=True, final_norm=True, pool='eot' (the position of the largest
    id, which is end-of-text). BERT: causal=False, pre_norm=False, embed_norm=True,
    type_vocab_size=2, pool='first' ([CLS]); padding (id `pad_id`) is masked out of attention.
    """

    vocab_size: int
    context_length: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    causal: bool = True
    pool: str = "eot"
    pre_norm: bool = True
    embed_norm: bool = False
    final_norm: bool = True
    type_vocab_size: int = 0
    pad_id: int = 0
    activation: str = "gelu"
    norm_eps: float = 1e-5
    fused_qkv: bool = True
    attention: str = "auto"
    scan: bool = True
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.token_embed = nn.Embed(self.vocab_size, self.width, **kw,
                                    embedding_init=logical(normal_init(0.02), ("vocab", "embed")))
        self.pos_embedding = self.param("pos_embedding", logical(normal_init(0.01), ("length", "embed")),
                                        (self.context_length, self.width), self.param_dtype)
        if self.type_vocab_size:
            self.type_embed = nn.Embed(self.type_vocab_size, self.width, **kw,
                                       embedding_init=logical(normal_init(0.02), (None, "embed")))
        if self.embed_norm:
            self.ln_embed = layer_norm(self.norm_eps, **kw)
        self.encoder = Encoder(self.depth, self.num_heads, self.mlp_dim, self.pre_norm,
                               self.activation, self.norm_eps, self.causal, self.fused_qkv,
                               self.attention, self.scan, self.remat, **kw)
        if self.final_norm:
            self.ln_final = layer_norm(self.norm_eps, **kw)

    def __call__(self, tokens, token_types=None):
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embedding[:length].astype(self.dtype)
        if self.type_vocab_size:
            x = x + self.type_embed(jnp.zeros_like(tokens) if token_types is None else token_types)
        if self.embed_norm:
            x = self.ln_embed(x)
        padding_mask = None if self.causal else tokens != self.pad_id
        x = self.encoder(x, padding_mask)
        if self.final_norm:
            x = self.ln_final(x)
        if self.pool == "eot":
            pooled = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]
        elif self.pool == "first":
            pooled = x[:, 0]
        else:
            raise ValueError(f"text pool {self.pool!r} unknown; valid: 'eot', 'first'")
        return pooled, x

    def word_embeddings(self):
        """The [vocab, width] token table (the MLM decoder is tied to it)."""
        return self.token_embed.embedding
