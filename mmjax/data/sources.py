"""Datasets by name: each is a source of examples {'image', 'text', 'label'} and the grain
transforms that turn its records into them.

A dataset says whether its source is random-access (`len` and `[i]`: grain samples and
checkpoints the exact position) or streamed (an iterable: resumed by counting what was
read). `config.data.datasets` and each evaluator's `dataset` name one; a user's own
dataset registers with `@DATASETS.register("name")`, or is named as 'module:Class'.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mmjax.data import transforms
from mmjax.registry import Registry

DATASETS = Registry("dataset", {name: "mmjax.data.sources"
                                for name in ("digit_captions", "prose", "play_genres")})

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

    def records(self, data_dir, split) -> Iterable:
        source = self.source(data_dir, split)
        return (source[i] for i in range(len(source))) if self.random_access else source


def get(name: str) -> Dataset:
    """The dataset object registered as `name`."""
    return DATASETS.get(name)()


class _Built(Dataset):
    """A built-in tfds builder (ArrayRecord in the data dir, read with no TensorFlow)."""

    builder = None   # the key of mmjax.data.builders.BUILDERS

    def prepare(self, data_dir):
        from mmjax.data import builders  # Lazy: pulls in tensorflow_datasets.
        builders.prepare(self.builder, data_dir)

    def source(self, data_dir, split):
        from mmjax.data import builders
        return builders.data_source(self.builder, data_dir, split)


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


@DATASETS.register('play_genres')
class PlayGenres(_Built):
    """~48-word chunks of Shakespeare's plays labelled by genre (6 classes); 1 in 10 held out."""

    builder = 'play_genres'
    features = ('text', 'label')
    class_names = ('comedies', 'histories', 'problems', 'roman', 'romances', 'tragedies')

    def example_ops(self, train):
        return [transforms.DecodeText()]

