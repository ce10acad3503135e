"""grain transforms from records to examples, and the batch function that makes model inputs.

Examples are dicts with some of 'image' (uint8 [S, S, C] once mmjax.data.images' transforms
ran), 'text' (str) and 'label' (int). `Collate` turns a list of them into the arrays a
task's batch spec asks for: images normalised, text tokenised, everything else stacked.
Keys starting with '_' are bookkeeping (row index, skipped records) and are stacked as given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grain
import numpy as np

from mmjax.data import images


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
    """record[key] bytes -> 'text' str (str passes through). Bytes that are not UTF-8 or an
    empty text raise ValueError: a bad record, which the pipeline skips and counts."""

    def __init__(self, key: str = 'text'):
        self.key = key

    def map(self, element):
        text = element[self.key]
        if isinstance(text, (bytes, np.bytes_)):
            text = bytes(text).decode('utf-8')
        if not text.strip():
            raise ValueError('empty text')
        return {**element, 'text': text}


class SplitCaptions(grain.transforms.RandomMap):
    """record[key]: an image's captions joined by newlines -> 'captions' (list of str),
    'n_captions', and 'text': one of them (at random when `random`, else the first)."""

    def __init__(self, key: str = 'captions', random: bool = True):
        self.key, self.random = key, random

    def random_map(self, element, rng: np.random.Generator):
        text = element[self.key]
        if isinstance(text, (bytes, np.bytes_)):
            text = bytes(text).decode('utf-8')
        captions = [c for c in text.split('\n') if c.strip()]
        if not captions:
            raise ValueError('no captions')
        pick = rng.integers(len(captions)) if self.random else 0
        return {**element, 'captions': captions, 'n_captions': len(captions), 'text': captions[pick]}


def apply_one(ops: Sequence, record, rng_seed):
    """One record through grain Map / RandomMap transforms outside a grain pipeline; the
    random ones draw from one generator seeded by `rng_seed` (a tuple of ints)."""
    rng = None
    for op in ops:
        if isinstance(op, grain.transforms.RandomMap):
            rng = rng or np.random.Generator(np.random.Philox(key=_key(rng_seed)))
            record = op.random_map(record, rng)
        else:
            record = op.map(record)
    return record


def _key(rng_seed) -> int:
    """A 64-bit Philox key from a tuple of ints (cheaper than a SeedSequence per record)."""
    key = 0x9E3779B97F4A7C15
    for value in rng_seed:
        key = ((key ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) \
            & 0xFFFFFFFFFFFFFFFF
        key ^= key >> 31
    return key


def apply(ops: Sequence, records: Iterable, seed: int = 0):
    """`apply_one` over records, seeded by (seed, index)."""
    for index, record in enumerate(records):
        yield apply_one(ops, record, (seed, index))


class Collate:
    """Batch function: a list of examples -> {key: array [b, ...]} for the keys of `spec`
    (and the '_' bookkeeping keys the examples carry)."""

    def __init__(self, spec: dict, tokenizer=None, image_options=None):
        self.spec, self.tokenizer = spec, tokenizer
        self.image_options = image_options or images.ImageOptions()

    def __call__(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
        out = {}
        for key, s in self.spec.items():
            if key == 'image':
                stacked = np.stack([e['image'] for e in examples])
                if stacked.shape[1:] != tuple(s.shape):
                    raise ValueError(f'images are {stacked.shape[1:]}, the model takes {s.shape}: '
                                     f'data.image_size / data.image_channels disagree with the task')
                out[key] = images.normalise(stacked, self.image_options).astype(s.dtype)
            elif key == 'text' and isinstance(examples[0]['text'], str):   # else tokenised (pairs)
                out[key] = self.tokenizer.encode([e['text'] for e in examples], s.shape[0])
            elif key == 'captions':  # [b, K, L]: each example's first K captions, zero rows after
                out[key] = np.zeros((len(examples), *s.shape), s.dtype)
                for row, e in enumerate(examples):
                    kept = e['captions'][:s.shape[0]]
                    out[key][row, :len(kept)] = self.tokenizer.encode(kept, s.shape[1])
            else:
                out[key] = np.stack([np.asarray(e[key], s.dtype) for e in examples])
        for key in examples[0]:
            if key.startswith('_'):
                out[key] = np.stack([e[key] for e in examples])
        return out
