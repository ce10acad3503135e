"""Builds the model a config describes, and the dummy inputs that initialise it."""

import jax.numpy as jnp
import numpy as np

from mmjax.nn.bert import BertMlm, MlmHead
from mmjax.nn.clip import DualEncoder
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT


def _common(model_config):
    return dict(dtype=jnp.dtype(model_config.dtype), param_dtype=jnp.dtype(model_config.param_dtype),
                scan=model_config.scan, remat=model_config.remat, attention=model_config.attention,
                fused_qkv=model_config.fused_qkv)


def _mlm_head(model_config):
    text = model_config.text
    return MlmHead(text.activation, text.norm_eps, dtype=jnp.dtype(model_config.dtype),
                   param_dtype=jnp.dtype(model_config.param_dtype))


def build_model(config):
    """`config.task` 'mlm' -> BertMlm; 'clip' / 'clip+mlm' -> DualEncoder (+ MLM head)."""
    m = config.model
    text = TextTransformer(**m.text, **_common(m))
    if config.task == "mlm":
        return BertMlm(text, _mlm_head(m))
    image = ViT(**m.image, **_common(m))
    return DualEncoder(image, text, m.embed_dim, init_logit_bias=m.get("init_logit_bias"),
                       mlm_head=_mlm_head(m) if config.task == "clip+mlm" else None,
                       param_dtype=jnp.dtype(m.param_dtype))


def init_args(config, batch_size=1):
    """(method name, example inputs) that touch every parameter of `build_model(config)`."""
    m = config.model
    tokens = np.zeros((batch_size, m.text.context_length), np.int32)
    positions = np.zeros((batch_size, m.mlm.max_predictions), np.int32)
    if config.task == "mlm":
        return "__call__", (tokens, positions)
    size, channels = config.data.image_size, config.data.image_channels
    images = np.zeros((batch_size, size, size, channels), np.float32)
    return "init_all", (images, tokens, positions)
