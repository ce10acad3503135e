"""A tower's options as one frozen object: the encoder stack, the ViT and the text tower.

Modules take one of these instead of a dozen fields passed on positionally, so a new
architecture switch is one field here and one line where it is used. `from_config` reads
them from `config.model` (tower keys + the compute keys every tower shares).
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

# Keys of `config.model` that say how every tower computes, not what it is.
COMPUTE_KEYS = ("dtype", "param_dtype", "scan", "remat", "attention", "fused_qkv",
                "prune_last_layer", "splash_min_length")
# Compute keys newer than some saved configs, with the value those runs behave the same under.
LATER_KEYS = {"prune_last_layer": True, "splash_min_length": 0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderOptions:
    """A stack of `depth` transformer blocks (width comes from the input)."""

    depth: int
    num_heads: int
    mlp_dim: int
    pre_norm: bool = True        # x + f(LN(x)) (CLIP/ViT); else LN(x + f(x)) (BERT)
    activation: str = "gelu"     # a key of nn.transformer.ACTIVATIONS
    norm_eps: float = 1e-5
    causal: bool = False
    fused_qkv: bool = True       # one [e, 3, h, d] kernel, or separate q/k/v kernels
    attention: str = "auto"      # backend of nn.attention.dot_product_attention
    splash_min_length: int = 0   # 'auto' on TPU: the splash kernel from this many keys (0: never)
    scan: bool = True            # params stacked on a leading 'layers' axis
    remat: str = "none"          # 'none' | 'full' | 'dots' | 'dots_no_batch'
    prune_last_layer: bool = True  # the last layer only at the rows the caller reads (exact)
    # How the tower encodes positions (nn.positions): 'learned' | 'sinusoidal' | 'rotary'
    # (the encoder only sees rotary angles; the tower adds tables or computes angles).
    position: str = "learned"
    rope_base: float = 10000.0   # rotary: pair i turns by p * rope_base^(-2i/head_dim) (1-D)
    dtype: Any = jnp.float32     # compute
    param_dtype: Any = jnp.float32

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTOptions(EncoderOptions):
    """Vision transformer: patch embedding, class token or mean pooling."""

    patch_size: int
    width: int
    pool: str = "cls"            # 'cls' | 'mean' | 'map' (attention pooling, SigLIP's)
    ln_pre: bool = True
    patch_bias: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextOptions(EncoderOptions):
    """Text transformer, CLIP-style (causal, EOT pooling) or BERT-style (post-LN, [CLS])."""

    vocab_size: int
    context_length: int
    width: int
    causal: bool = True
    pool: str = "eot"            # 'eot' (first eot_id) | 'first' | 'last' (SigLIP's) | 'mean' (real tokens)
    embed_norm: bool = False
    final_norm: bool = True
    type_vocab_size: int = 0
    pad_id: int = 0
    # The tokenizer's end-of-text id, which pool='eot' reads (`from_config` takes it from the
    # tokenizer: data, not a config key). None: vocab_size - 1, CLIP's convention (its BPE's
    # EOT is its largest id, which open_clip's argmax pooling finds).
    eot_id: int | None = None


def compute(model_config) -> dict:
    """The compute keys of `config.model`, dtypes as numpy dtypes."""
    c = {k: model_config[k] if k in model_config else LATER_KEYS[k] for k in COMPUTE_KEYS}
    return c | dict(dtype=jnp.dtype(c["dtype"]), param_dtype=jnp.dtype(c["param_dtype"]))


# Options a tower takes from the tokenizer, never from `config.model`.
TOKENIZER_KEYS = {"image": (), "text": ("eot_id",)}


def from_config(model_config, tower: str, tokenizer=None):
    """ViTOptions ('image') or TextOptions ('text') of `config.model`; the text tower's
    `eot_id` is `tokenizer.eot_id` (no tokenizer, or none declared: TextOptions' default)."""
    cls = {"image": ViTOptions, "text": TextOptions}[tower]
    fields = {f.name for f in dataclasses.fields(cls)} - set(TOKENIZER_KEYS[tower])
    unknown = set(model_config[tower]) - fields
    if unknown:
        raise ValueError(f"model.{tower} has keys no tower option takes: {sorted(unknown)}; "
                         f"valid: {sorted(fields - set(COMPUTE_KEYS))}")
    from_tokenizer = {k: getattr(tokenizer, k) for k in TOKENIZER_KEYS[tower]
                      if getattr(tokenizer, k, None) is not None}
    return cls(**model_config[tower], **compute(model_config), **from_tokenizer)
