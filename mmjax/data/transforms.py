"""grain transforms from records to examples, and the batch function that makes model inputs.

Examples are dicts with some of 'image' (uint8 [H, W, C]), 'text' (str) and 'label' (int).
`Collate` turns a list of them into the arrays a task's batch spec asks for: images resized
to `data.image_size` and scaled to [-1, 1], text tokenised, everything else stacked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grain
import numpy as np


class CaptionFromLabel(grain.transforms.RandomMap):
    """label -> text from a caption template: at random (reproducible per example and epoch)
    when `random`, else always the first template."""

    def __init__(self, class_names: Sequence[str], templates: Sequence[str], random: bool = True):
        self.class_names, self.templates, self.random = tuple(class_names), tuple(templates), random

    def random_map(self, element, rng: np.random.Generator):
        label = int(element['label'])
        template = rng.integers(len(self.templates)) if self.random else 0
        return {**element, 'text': self.templates[template].format(self.class_names[label]),
                'label': label}


class DecodeText(grain.transforms.Map):
    """Record bytes -> str."""

    def map(self, element):
        return {**element, 'text': element['text'].decode('utf-8')}


def apply_one(ops: Sequence, record, rng_seed):
    """One record through grain Map / RandomMap transforms outside a grain pipeline; the
    random ones draw from a generator seeded by `rng_seed` (a tuple of ints)."""
    for op in ops:
        if isinstance(op, grain.transforms.RandomMap):
            record = op.random_map(record, np.random.default_rng(rng_seed))
        else:
            record = op.map(record)
    return record


def apply(ops: Sequence, records: Iterable, seed: int = 0):
    """`apply_one` over records, seeded by (seed, index)."""
    for index, record in enumerate(records):
        yield apply_one(ops, record, (seed, index))


def scale_images(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1]."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def fit_image(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 [h, w, c] -> uint8 `shape` [H, W, C]: channels matched (grey <-> RGB), then
    resized (bicubic) when the size differs."""
    height, width, channels = shape
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != channels:
        if channels == 1:
            image = image.mean(axis=-1, keepdims=True).round().astype(np.uint8)
        elif image.shape[-1] == 1:
            image = np.repeat(image, channels, axis=-1)
        else:
            raise ValueError(f'cannot turn {image.shape[-1]}-channel images into {channels} '
                             f'channels; set data.image_channels to {image.shape[-1]}')
    if image.shape[:2] != (height, width):
        from PIL import Image
        planes = [np.asarray(Image.fromarray(image[..., c]).resize((width, height), Image.BICUBIC))
                  for c in range(image.shape[-1])]
        image = np.stack(planes, axis=-1)
    return image


class Collate:
    """Batch function: a list of examples -> {key: array [b, ...]} for the keys of `spec`."""

    def __init__(self, spec: dict, tokenizer=None):
        self.spec, self.tokenizer = spec, tokenizer

    def __call__(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
        out = {}
        for key, s in self.spec.items():
            if key == 'image':
                images = np.stack([fit_image(e['image'], s.shape) for e in examples])
                out[key] = scale_images(images).astype(s.dtype)
            elif key == 'text':
                out[key] = self.tokenizer.encode([e['text'] for e in examples], s.shape[0])
            else:
                out[key] = np.stack([np.asarray(e[key], s.dtype) for e in examples])
        return out
