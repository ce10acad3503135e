"""Hard negatives for image-text matching: one per row, drawn ∝ softmax of the contrastive logits.

ALBEF / BLIP's sampling: for each image a text (and for each text an image) of the batch,
more often the ones the dual encoder confuses with the positive, never the positive itself
nor a false negative (a candidate that also describes the image: the same caption token for
token, or the same class label).
"""

import jax
import jax.numpy as jnp


def false_negatives(texts, labels=None):
    """[B, B] bool, True where pair (i, j) must not be a negative: texts [B, l] equal token for
    token (the diagonal included), or labels [B] equal when given."""
    same = (texts[:, None, :] == texts[None, :, :]).all(axis=-1)
    if labels is not None:
        same = same | (labels[:, None] == labels[None, :])
    return same


def draw(rng, logits, excluded):
    """One candidate per row of logits [B, C] with probability softmax(logits[i]) renormalised
    over the allowed candidates (excluded [B, C] False) -> (index [B] int32, valid [B] bool).

    A row with no allowed candidate has valid False (its index is 0: weigh it out)."""
    masked = jnp.where(excluded, -jnp.inf, logits.astype(jnp.float32))
    index = jax.random.categorical(rng, masked, axis=-1).astype(jnp.int32)
    valid = ~excluded.all(axis=-1)
    return jnp.where(valid, index, 0), valid


def hard_negatives(rng, logits, excluded):
    """For the scaled image-text similarities logits [B, B] (row: image, column: text):
    (negative text of each image [B], negative image of each text [B], valid_text [B],
    valid_image [B]); independent draws (the key is split), stop-gradient logits."""
    logits = jax.lax.stop_gradient(logits)
    k_text, k_image = jax.random.split(rng)
    text, text_ok = draw(k_text, logits, excluded)
    image, image_ok = draw(k_image, logits.T, excluded.T)
    return text, image, text_ok, image_ok
