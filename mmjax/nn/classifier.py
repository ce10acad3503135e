"""A classification head on one tower's pooled features, or on a fusion model's fused first token."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT


def _head(num_classes, param_dtype):
    return nn.Dense(num_classes, name="classifier", param_dtype=param_dtype,
                    kernel_init=logical(nn.initializers.zeros, ("embed", "vocab")),
                    bias_init=logical(nn.initializers.zeros, ("vocab",)))


class Classifier(nn.Module):
    """Images [b, H, W, C] (with `image`) or tokens [b, l] (with `text`) -> logits [b, classes].

    The tower keeps its name ('image' / 'text'), so a CLIP or BERT run's tower loads into it
    by name (`config.init`), and the new head is 'classifier'."""

    num_classes: int
    image: ViT | None = None
    text: TextTransformer | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs):
        features = self.image(inputs) if self.image is not None else self.text.pooled(inputs)
        return _head(self.num_classes, self.param_dtype)(features)


class FusedClassifier(nn.Module):
    """(images [b, H, W, C], tokens [b, l]) -> logits [b, classes]: a linear head on the fused
    first token of each (image, text) pair (VQA-style fine-tuning).

    `fusion` is any model serving `image_features(images) -> (_, image tokens [b, n, w])` and
    `fused_features(image tokens, tokens) -> [b, width]` (nn/fusion.py). Its params sit under
    'fusion/', so a clip+itm run loads with init.rename=(('', 'fusion/'),); the head is
    'classifier'."""

    num_classes: int
    fusion: nn.Module
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images, tokens):
        image_tokens = self.fusion.image_features(images)[1]
        features = self.fusion.fused_features(image_tokens, tokens)
        return _head(self.num_classes, self.param_dtype)(features)
