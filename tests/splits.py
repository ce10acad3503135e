"""Whole built-in splits as arrays, for tests that check their content (evaluators stream)."""

import numpy as np

from mmjax.data import images, sources, transforms

DIGIT_IMAGES = images.ImageOptions(size=28, channels=1, crop='resize', mean=(0.5,) * 3, std=(0.5,) * 3)


def _examples(name, data_dir, split):
    dataset = sources.get(name)
    return list(transforms.apply(dataset.example_ops(train=False), dataset.records(data_dir, split)))


def digit_arrays(data_dir, split='test'):
    """image f32 [n, 28, 28, 1] in [-1, 1], label i32 [n], caption list[str] (first template)."""
    examples = _examples('digit_captions', data_dir, split)
    return {'image': images.normalise(np.stack([e['image'] for e in examples]), DIGIT_IMAGES),
            'label': np.array([e['label'] for e in examples], np.int32),
            'caption': [e['text'] for e in examples]}


def prose_texts(data_dir, split='test'):
    return [e['text'] for e in _examples('prose', data_dir, split)]
