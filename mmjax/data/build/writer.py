"""Writes examples as a tfds dataset folder: ArrayRecord shards per split + tfds metadata."""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

SHARD_MAX_EXAMPLES = 10_000
SHARD_MAX_BYTES = 256 << 20
FILE_SUFFIX = 'array_record'
_RANDOM_ACCESS = 'group_size:1'  # What tfds itself writes: every record is one seek away.


def tfds_features(features: tuple[str, ...],
                  class_names: list[str] | None) -> tfds.features.FeaturesDict:
    """Image: a scalar string (the encoded bytes; read back as bytes, nothing decodes them),
    text: Text (read back as UTF-8 bytes), label: ClassLabel (read back as int), captions: Text
    (an image's captions joined with newlines)."""
    spec = {'image': tfds.features.Tensor(shape=(), dtype=np.object_),
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=class_names) if class_names else None,
            'captions': tfds.features.Text()}
    return tfds.features.FeaturesDict({name: spec[name] for name in features})


class _SplitWriter:
    """One split's shards, rolled over by count and size; named the tfds way on `close`."""

    def __init__(self, folder: str, name: str, split: str):
        self.folder, self.split, self.prefix = folder, split, f'{name}-{split}.{FILE_SUFFIX}'
        self.shard_lengths, self.num_bytes = [], 0
        self._writer, self._shard_bytes = None, 0

    def _part(self, index: int) -> str:
        return os.path.join(self.folder, f'{self.prefix}-{index:05d}.part')

    def write(self, record: bytes) -> None:
        if self._writer is None:
            self._writer = ArrayRecordWriter(self._part(len(self.shard_lengths)), _RANDOM_ACCESS)
            self.shard_lengths.append(0)
            self._shard_bytes = 0
        self._writer.write(record)
        self.shard_lengths[-1] += 1
        self._shard_bytes += len(record)
        self.num_bytes += len(record)
        if self.shard_lengths[-1] >= SHARD_MAX_EXAMPLES or self._shard_bytes >= SHARD_MAX_BYTES:
            self._writer.close()
            self._writer = None

    def close(self) -> tfds.core.SplitInfo:
        if self._writer is not None:
            self._writer.close()
        count = len(self.shard_lengths)
        for index in range(count):
            os.rename(self._part(index),
                      os.path.join(self.folder, f'{self.prefix}-{index:05d}-of-{count:05d}'))
        return tfds.core.SplitInfo(name=self.split,
                                   shard_lengths=self.shard_lengths, num_bytes=self.num_bytes)


class DatasetWriter:
    """Serialises examples into `folder` (a tfds version folder) split by split."""

    def __init__(self, folder: str, name: str, features: tuple[str, ...], class_names=None):
        self.folder, self.name = folder, name
        self.features = tfds_features(features, class_names)
        self._fields = features
        self._splits: dict[str, _SplitWriter] = {}

    def write(self, split: str, example) -> None:
        if split not in self._splits:
            self._splits[split] = _SplitWriter(self.folder, self.name, split)
        record = {field: getattr(example, field) for field in self._fields}
        self._splits[split].write(self.features.serialize_example(record))

    def counts(self) -> dict[str, int]:
        return {split: sum(w.shard_lengths) for split, w in sorted(self._splits.items())}

    def close(self, description: str) -> int:
        """Finishes the shards and writes dataset_info.json / features.json; returns the bytes written."""
        split_infos = [writer.close() for _, writer in sorted(self._splits.items())]
        template = tfds.core.ShardedFileTemplate(data_dir=self.folder, dataset_name=self.name,
                                                 filetype_suffix=FILE_SUFFIX)
        tfds.folder_dataset.write_metadata(
            data_dir=self.folder, features=self.features, split_infos=split_infos,
            filename_template=template, check_data=False,  # Its check reads with TensorFlow.
            description=description, disable_shuffling=True)
        return sum(os.path.getsize(os.path.join(self.folder, f)) for f in os.listdir(self.folder)
                   if f.startswith(f'{self.name}-'))
