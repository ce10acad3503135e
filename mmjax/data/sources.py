"""Datasets by name: each is a source of examples {'image', 'text', 'label'} and the grain
transforms that turn its records into them.

A dataset says whether its source is random-access (`len` and `[i]`: grain samples and
checkpoints the exact position) or streamed (an iterable: resumed by counting what was
read). `config.data.train` and each evaluator's `dataset` name one: a registered dataset
(the built-in sets; a user's class registers with `@DATASETS.register("name")` or is named
as 'module:Class'), or any tfds dataset folder in the data dir: what `mmjax data build`
made, or a tfds catalog dataset prepared there as ArrayRecord.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from mmjax import paths
from mmjax.data import transforms
from mmjax.errors import ConfigError, DatasetMissing
from mmjax.registry import DATASETS  # the table lives in mmjax/registry.py

# Captions of the built-in digits (templates written for this project).
DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
CAPTION_TEMPLATES = (
    'a photo of the digit {}',
    'a handwritten {}',
    'an image of the number {}',
    'a scanned handwritten digit {}',
    'the number {} written by hand',
    'a black and white picture of a {}',
)


class Dataset:
    """Base class of a named dataset."""

    random_access = True
    features = ()              # the example keys it gives: some of 'image', 'text', 'label'
    class_names = None         # labelled sets: the name of each label (zero-shot prompts)
    templates = None           # and the caption templates its captions are made with

    def prepare(self, data_dir) -> None:
        """Builds the dataset in `data_dir` on first use (a cheap no-op afterwards)."""

    def source(self, data_dir, split):
        """Random-access (`__len__`, `__getitem__`) or, if not `random_access`, an iterable of records."""
        raise NotImplementedError

    def example_ops(self, train: bool) -> list:
        """grain transforms: record -> example. With `train` False, deterministic ones only."""
        return []

    def texts(self, data_dir, split='train') -> Iterator[str]:
        """The split's text, one example at a time (tokenizer training, token statistics)."""
        for example in transforms.apply(self.example_ops(train=False), self.records(data_dir, split)):
            yield example['text']

    def split_sizes(self, data_dir) -> dict:
        """{split: examples} of the splits the dataset lists (none unless it declares `splits`)."""
        return dict(getattr(self, 'splits', None) or {})

    def records(self, data_dir, split) -> Iterable:
        source = self.source(data_dir, split)
        return (source[i] for i in range(len(source))) if self.random_access else source


def get(name: str, data_dir=None) -> Dataset:
    """The dataset `name`: a registered one, else the tfds folder `data_dir/name`."""
    if name in DATASETS.names() or ':' in name:
        return DATASETS.get(name)()
    if data_dir is not None:
        path = tfds_folder(data_dir, name)
        if path:
            return TfdsFolder(name, path)
    raise DatasetMissing(missing_message(name, data_dir))


def missing_message(name, data_dir) -> str:
    from mmjax.data import builders
    root = builders.resolve_data_dir(data_dir)
    folder = paths.resolve(root)
    there = sorted(d.name for d in (folder.iterdir() if folder.is_dir() else ())
                   if tfds_folder(root, d.name))
    return (f"dataset {name!r} is neither built in (valid: {', '.join(DATASETS.names())}) nor in "
            f"data_dir {root} (which holds {', '.join(there) or 'no datasets'}); make it with "
            f"`mmjax data build SOURCE --name {name} --data_dir {root}`")


def tfds_folder(data_dir, name) -> str | None:
    """`data_dir/name/VERSION` (the newest) holding a tfds dataset_info.json, else None."""
    from mmjax.data import builders
    root = paths.resolve(builders.resolve_data_dir(data_dir)) / name
    if name.startswith('.') or not root.is_dir():
        return None
    versions = [v.name for v in root.iterdir() if (v / 'dataset_info.json').is_file()]
    key = lambda v: tuple(int(x) if x.isdigit() else -1 for x in v.split('.'))
    return os.fspath(root / max(versions, key=key)) if versions else None


class InMemory:
    """A small random-access source read once into memory: the built-in sets are a few MB,
    and parsing a tfds record costs ~0.3 ms, more than the rest of a smoke step's input."""

    def __init__(self, source):
        self._records = source.__getitems__(range(len(source)))

    def __len__(self):
        return len(self._records)

    def __getitem__(self, index):
        return self._records[index]

    def _getitems(self, indices):
        return [self._records[i] for i in indices]


class Batched:
    """A tfds data source that grain reads many records at a time (`_getitems`)."""

    def __init__(self, source):
        self._source = source

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        return self._source[index]

    def _getitems(self, indices):
        return self._source.__getitems__(list(indices))


class _Built(Dataset):
    """A built-in tfds builder (ArrayRecord in the data dir, read with no TensorFlow), small
    enough to be held in memory."""

    builder = None   # the key of mmjax.data.builders.BUILDERS

    def prepare(self, data_dir):
        from mmjax.data import builders  # Lazy: pulls in tensorflow_datasets.
        builders.prepare(self.builder, data_dir)

    def source(self, data_dir, split):
        from mmjax.data import builders
        return InMemory(builders.data_source(self.builder, data_dir, split))

    def split_sizes(self, data_dir):
        from mmjax.data import builders
        splits = builders.prepare(self.builder, data_dir).info.splits
        return {k: v.num_examples for k, v in splits.items()}


@DATASETS.register('digit_captions')
class DigitCaptions(_Built):
    """5,000 real MNIST digits (28×28×1), captioned from templates: 4,000 train, 1,000 test."""

    builder = 'digit_captions'
    features = ('image', 'text', 'label')
    class_names = DIGIT_NAMES
    templates = CAPTION_TEMPLATES

    def example_ops(self, train):
        # Training picks a template at random per example and epoch; evaluation the first.
        return [transforms.CaptionFromLabel(self.class_names, self.templates, random=train)]


@DATASETS.register('prose')
class Prose(_Built):
    """English prose: Python's pydoc topics and 38 Shakespeare plays in ~48-word chunks."""

    builder = 'prose'
    features = ('text',)

    def example_ops(self, train):
        return [transforms.DecodeText()]


@DATASETS.register('prose_passages')
class ProsePassages(Prose):
    """The prose's texts in ~96-word passages, 1 in 10 held out: sentence pairs (NSP) that
    fill a 128-token row."""

    builder = 'prose_passages'


@DATASETS.register('play_genres')
class PlayGenres(_Built):
    """~48-word chunks of Shakespeare's plays labelled by genre (6 classes); 1 in 10 held out."""

    builder = 'play_genres'
    features = ('text', 'label')
    class_names = ('comedies', 'histories', 'problems', 'roman', 'romances', 'tragedies')

    def example_ops(self, train):
        return [transforms.DecodeText()]



def _display_names(path, num_classes):
    """Readable class names that `mmjax data build` stored next to a dataset (ImageNet's
    label names are WordNet ids; its zero-shot prompts need words), else None. A list whose
    length is not the label's class count would caption and score the wrong classes."""
    import json
    info = paths.resolve(path) / 'mmjax_build.json'
    if info.exists():
        names = json.loads(info.read_text()).get('class_names')
        if names and num_classes and len(names) != num_classes:
            raise ConfigError(f"{info}: 'class_names' holds {len(names)} names, but the dataset's "
                              f"labels have {num_classes} classes; give one name per class, in "
                              f"label order (or remove 'class_names' to use the label names)")
        return tuple(names) if names else None
    return None


class TfdsFolder(Dataset):
    """A tfds dataset folder read as ArrayRecord with no TensorFlow: what `mmjax data build`
    writes, or a tfds catalog dataset prepared in the data dir. Images come out as their
    encoded bytes (decoded by the pipeline's image transforms); an 'image' + 'label' set
    without text gets captions from its class names ("a photo of a {}.")."""

    TEMPLATES = ('a photo of a {}.',)

    def __init__(self, name, path):
        import tensorflow_datasets as tfds  # Lazy: heavy.
        self.name, self.path = name, path
        self._builder = tfds.builder_from_directory(path)
        features = self._builder.info.features
        self._image_keys = [k for k in features if type(features[k]).__name__ == 'Image']
        self._text_key = next((k for k in ('text', 'caption') if k in features), None)
        self._captions = 'captions' in features
        label = features['label'] if 'label' in features else None
        names = tuple(label.names) if hasattr(label, 'names') else None
        self.class_names = _display_names(path, len(names) if names else 0) or names
        self.splits = {k: v.num_examples for k, v in self._builder.info.splits.items()}
        given = (('image' if 'image' in features else None), ('label' if label else None),
                 ('text' if self._text_key or self._captions or (label and self.class_names) else None),
                 ('captions' if self._captions else None))
        self.features = tuple(f for f in given if f)
        self.templates = (self.TEMPLATES if self.class_names and not (self._text_key or self._captions)
                          else None)

    def source(self, data_dir, split):
        import tensorflow_datasets as tfds
        if split not in self.splits:
            raise ConfigError(f"dataset {self.name!r} has no split {split!r}; it has "
                              f"{', '.join(self.splits)}: set the evaluator's split")
        return Batched(self._builder.as_data_source(
            split, decoders={k: tfds.decode.SkipDecoding() for k in self._image_keys}))

    def example_ops(self, train):
        ops = []
        if self._captions:
            ops.append(transforms.SplitCaptions('captions', random=train))
        elif self._text_key:
            ops.append(transforms.DecodeText(self._text_key))
        elif self.templates:
            ops.append(transforms.CaptionFromLabel(self.class_names, self.templates, random=train))
        return ops
