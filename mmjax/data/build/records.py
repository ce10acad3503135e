"""What flows through a build: source items, processed examples, skips, and BuildError
(from mmjax/errors.py, re-exported here)."""

from __future__ import annotations

import dataclasses
from typing import Iterator

from mmjax.errors import BuildError  # noqa: F401  (the readers import it from here)

IMAGE_TEXT = ('image', 'text')
IMAGE_LABEL = ('image', 'label')
IMAGE_CAPTIONS = ('image', 'captions')   # Retrieval benchmarks: one record per image.
TEXT = ('text',)


@dataclasses.dataclass(frozen=True)
class Item:
    """One record as a reader found it, before the per-record work.

    `key` decides the train/validation assignment (records sharing it land together, e.g. the
    captions of one image); `where` names the record in messages (path, shard/key, row)."""
    key: str
    where: str
    split: str | None = None            # From a split column / split folder; None -> train.
    image_path: str | None = None
    image_bytes: bytes | None = None
    text: str | bytes | None = None     # bytes are decoded (strict UTF-8) by the worker.
    label: int | None = None
    captions: tuple[str, ...] | None = None   # An image's several captions, as the source has them.


@dataclasses.dataclass(frozen=True)
class Skip:
    """A record left out of the dataset, and why (a key of the summary's `skipped` counts)."""
    where: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Example:
    """A record ready to serialise: encoded image bytes, UTF-8 text, class index, and captions
    (an image's captions, each on one line, joined with newlines)."""
    key: str
    split: str | None
    image: bytes | None = None
    text: str | None = None
    label: int | None = None
    captions: str | None = None


@dataclasses.dataclass
class Source:
    """An opened source: its features, its records in a fixed order, what it already knows."""
    features: tuple[str, ...]
    items: Iterator[Item | Skip]
    class_names: list[str] | None = None       # The ClassLabel names (unique).
    display_names: list[str] | None = None     # Readable names for prompts when class_names are
                                               # ids (ImageNet's WordNet ids); else class_names.
    has_splits: bool = False            # Splits come from the source (column or folders).
    total: int | None = None            # Number of records when known up front (progress bar).
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # Go into the summary,
                                        # e.g. train images not in --images (not bad records).
