"""A classification head on one tower's pooled features (fine-tuning, linear heads)."""

import flax.linen as nn
import jax.numpy as jnp

from mmjax.nn.init import logical, normal_init
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import ViT


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
        return nn.Dense(self.num_classes, name="classifier", param_dtype=self.param_dtype,
                        kernel_init=logical(nn.initializers.zeros, ("embed", "vocab")),
                        bias_init=logical(nn.initializers.zeros, ("vocab",)))(features)
