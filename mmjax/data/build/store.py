"""Where built datasets live in the data dir, and how to find, describe and read one."""

from __future__ import annotations

import json
import os

from mmjax.data.builders import resolve_data_dir
from mmjax.data.build.records import BuildError

VERSION = '1.0.0'
BUILD_FILE = 'mmjax_build.json'   # Written last: its presence marks a finished build.
FEATURE_ORDER = ('image', 'text', 'label')


def version_folder(data_dir, name: str) -> str:
    return os.path.join(resolve_data_dir(data_dir), name, VERSION)


def dataset_path(data_dir, name: str) -> str | None:
    """The version folder of dataset `name` built by `mmjax data build`, None when absent."""
    folder = version_folder(data_dir, name)
    return folder if os.path.isfile(os.path.join(folder, BUILD_FILE)) else None


def list_built(data_dir) -> list[str]:
    """Names of the datasets `mmjax data build` made in data_dir, sorted."""
    root = resolve_data_dir(data_dir)
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if not n.startswith('.') and dataset_path(root, n))


def read_build_record(folder: str) -> dict:
    """The mmjax_build.json of a version folder: kind, source, options, fingerprint, summary."""
    with open(os.path.join(folder, BUILD_FILE), encoding='utf-8') as f:
        return json.load(f)


def write_build_record(folder: str, record: dict) -> None:
    with open(os.path.join(folder, BUILD_FILE), 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1, sort_keys=True)


def _require(data_dir, name: str) -> str:
    folder = dataset_path(data_dir, name)
    if folder is None:
        built = ', '.join(list_built(data_dir)) or 'none'
        raise BuildError(f'no dataset {name!r} built in {resolve_data_dir(data_dir)} (built there: '
                         f'{built}); run `mmjax data build SOURCE --name {name}`')
    return folder


def read_info(data_dir, name: str) -> dict:
    """{'features': ('image', 'text') | ('image', 'label') | ('text',), 'class_names': [...] | None,
    'splits': {split: count}, 'kind': ..., 'path': version folder}; reads only mmjax_build.json."""
    folder = _require(data_dir, name)
    record = read_build_record(folder)
    return {'features': tuple(record['features']), 'class_names': record.get('class_names'),
            'splits': dict(record['summary']['splits']), 'kind': record['kind'], 'path': folder}


def open_split(data_dir, name: str, split: str):
    """A random-access source (len, [i], picklable for grain) over one split. Records are dicts:
    'image' -> encoded bytes, 'text' -> UTF-8 bytes, 'label' -> int; no TensorFlow involved."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # ~0.4 s
    folder = _require(data_dir, name)
    builder = tfds.builder_from_directory(folder)
    if split not in builder.info.splits:
        raise BuildError(f'dataset {name!r} has no split {split!r}; its splits: '
                         f'{", ".join(builder.info.splits)}')
    return builder.as_data_source(split)
