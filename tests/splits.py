"""Whole built-in splits as arrays, for tests that check their content (evaluators stream)."""

import numpy as np

from mmjax.data import sources, transforms


def _examples(name, data_dir, split):
    dataset = sources.get(name)
    return list(transforms.apply(dataset.example_ops(train=False), dataset.records(data_dir, split)))


def digit_arrays(data_dir, split='test'):
    """image f32 [n, 28, 28, 1] in [-1, 1], label i32 [n], caption list[str] (first template)."""
    examples = _examples('digit_captions', data_dir, split)
    return {'image': transforms.scale_images(np.stack([e['image'] for e in examples])),
            'label': np.array([e['label'] for e in examples], np.int32),
            'caption': [e['text'] for e in examples]}


def prose_texts(data_dir, split='test'):
    return [e['text'] for e in _examples('prose', data_dir, split)]
