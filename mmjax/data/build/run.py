"""One build: check, read, process in worker processes, write, and put the result in place."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

from tqdm import tqdm

from mmjax import paths
from mmjax.data.build import (conll, detect, imagefolder, imagenet, install, karpathy, store,
                              table, text, webdataset)
from mmjax.data.build.parallel import processed
from mmjax.data.build.records import BuildError, Skip, Source
from mmjax.data.build.writer import DatasetWriter
from mmjax.data.builders import resolve_data_dir

READERS = {'table': table.read, 'webdataset': webdataset.read, 'imagefolder': imagefolder.read,
           'text': text.read, 'imagenet': imagenet.read, 'karpathy': karpathy.read,
           'conll': conll.read}
COLUMN_OPTIONS = ('image_column', 'caption_column', 'split_column', 'text_unit', 'tag_scheme')
DEFAULT_VAL_FRACTION = 0.01   # When the source names no validation split of its own.
BUILD_FORMAT = 1              # Bump when the stored layout changes: old builds then rebuild.
EARLY_ABORT_AFTER = 1000      # This many bad records and no good one yet: stop, the setup is wrong.
_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


def _check(name, max_side, val_fraction, workers, max_bad_fraction, columns) -> None:
    unknown = sorted(set(columns) - set(COLUMN_OPTIONS))
    if unknown:
        raise TypeError(f'build() got unknown options {unknown}; valid: {", ".join(COLUMN_OPTIONS)}')
    if not isinstance(name, str) or not _NAME.match(name):
        suggestion = re.sub(r'[^A-Za-z0-9_]', '_', str(name))
        raise BuildError(f'--name {name!r} must start with a letter and hold only letters, digits '
                         f'and _ (tfds dataset names), e.g. {suggestion!r}')
    if max_side is not None and max_side < 1:
        raise BuildError(f'--max_side {max_side} must be a positive number of pixels')
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise BuildError(f'--val_fraction {val_fraction} must be in [0, 1)')
    if workers is not None and workers < 1:
        raise BuildError(f'--workers {workers} must be at least 1')
    if not 0 <= max_bad_fraction <= 1:
        raise BuildError(f'--max_bad_fraction {max_bad_fraction} must be in [0, 1]')


def fingerprint(kind: str, inputs: list[str], options: dict) -> str:
    """Hash of the source files (sorted paths, sizes, mtimes) and the options that shape the output."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for path in sorted(detect.input_files(kind, inputs)):
        stat = os.stat(path)
        line = f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'
        digest.update(line.encode('utf-8', 'surrogateescape'))
    return digest.hexdigest()


def _side_inputs(kind: str, labels: str | None, images) -> dict[str, str | list[str]]:
    """The files a kind reads besides SOURCE: ImageNet's labels file, Karpathy's --images."""
    if labels is not None and kind != 'imagenet':
        raise BuildError(f'--labels is for --kind imagenet, not {kind}; drop it')
    if images is not None and kind != 'karpathy':
        raise BuildError(f'--images is for --kind karpathy, not {kind}; drop it')
    if kind == 'imagenet':
        return {'labels': imagenet.labels_file(labels)}
    if kind == 'karpathy':
        return {'images': karpathy.image_paths(images)}
    return {}


def _split_of(split: str | None, key: str, val_fraction: float) -> str:
    """The source's split, else train; a val_fraction of train goes to validation by key hash
    (deterministic: a rebuild assigns every record the same way)."""
    split = split or 'train'
    if split == 'train' and val_fraction > 0:
        digest = hashlib.sha256(key.encode('utf-8', 'surrogateescape')).digest()
        if int.from_bytes(digest[:8], 'big') < val_fraction * 2.0 ** 64:
            return 'validation'
    return split


def _too_many_bad(skipped: collections.Counter, total: int, limit: float,
                  examples: list, early: bool = False) -> BuildError:
    bad = sum(skipped.values())
    reasons = ', '.join(f'{n} {r}' for r, n in skipped.most_common())
    shown = '; '.join(f'{where} ({reason})' for where, reason in examples)
    if early:
        return BuildError(f'the first {bad} records are all bad ({reasons}), e.g. {shown}; stopped '
                          'early: fix the source or its columns')
    if bad == total and limit >= 1:
        return BuildError(f'none of the {total} records is usable ({reasons}); e.g. {shown}. Fix the '
                          'source or its columns')
    return BuildError(f'{bad} of {total} records are bad ({bad / total:.1%}: {reasons}), over the '
                      f'limit --max_bad_fraction {limit}; e.g. {shown}. Fix the source or raise '
                      '--max_bad_fraction')


def _write(source: Source, folder: str, name: str, max_side, val_fraction: float, workers: int,
           max_bad_fraction: float) -> dict:
    """Writes every good record into `folder`; returns the summary (without path)."""
    writer = DatasetWriter(folder, name, source.features, source.class_names)
    skipped, bad_examples, examples = collections.Counter(), [], 0
    bar = tqdm(total=source.total, desc=f'building {name}', unit=' records', file=sys.stderr,
               mininterval=0.5, dynamic_ncols=True)
    with bar, contextlib.closing(processed(source, max_side, workers)) as results:
        for result in results:
            bar.update()
            if isinstance(result, Skip):
                skipped[result.reason] += 1
                if len(bad_examples) < 3:
                    bad_examples.append((result.where, result.reason))
                bad = sum(skipped.values())
                if examples == 0 and bad >= EARLY_ABORT_AFTER and max_bad_fraction < 1:
                    raise _too_many_bad(skipped, bad, max_bad_fraction, bad_examples, early=True)
                continue
            writer.write(_split_of(result.split, result.key, val_fraction), result)
            examples += 1
    total = examples + sum(skipped.values())
    if total == 0:
        raise BuildError('the source holds no records; point SOURCE at data')
    if examples == 0 or sum(skipped.values()) / total > max_bad_fraction:
        raise _too_many_bad(skipped, total, max_bad_fraction, bad_examples)
    num_bytes = writer.close(f'Built by `mmjax data build`: {", ".join(source.features)}.')
    summary = {'name': name, 'examples': examples, 'skipped': dict(sorted(skipped.items())),
               'bytes': num_bytes, 'splits': writer.counts(), 'features': list(source.features),
               **source.counts}
    if source.class_names:
        summary['num_classes'] = len(source.class_names)
    return summary


def _build_into_bucket(uri, source, name, **options) -> dict:
    """A build into gs://... : made on local disk, then uploaded with dataset_info.json last
    (its presence marks a finished upload). An existing remote dataset is never replaced:
    objects cannot be swapped atomically, so the user removes it or picks another name."""
    target = paths.resolve(uri) / name
    if target.exists():
        raise BuildError(f'{target} exists; a dataset in a bucket is not replaced in place: '
                         f'remove it first (gcloud storage rm -r {target}) or pass another --name')
    with tempfile.TemporaryDirectory(prefix='mmjax_build_') as local:
        summary = build(source, name, local, **options)
        paths.upload_tree(os.path.join(local, name), target,
                          last=os.path.join(store.VERSION, 'dataset_info.json'))
    return {**summary, 'path': os.fspath(target / store.VERSION)}


def build(source, name: str, data_dir=None, kind: str | None = None, max_side: int | None = None,
          val_fraction: float | None = None, overwrite: bool = False, workers: int | None = None,
          max_bad_fraction: float = 0.01, labels: str | None = None,
          images: str | list[str] | None = None, **columns) -> dict:
    """Builds dataset `name` into data_dir/name/1.0.0 from `source`; returns the summary
    {name, kind, examples, skipped: {reason: n}, bytes, splits: {split: n}, features, path}
    (karpathy adds train_images_not_found: train/restval images that `images` lacks).

    A rerun with the same source files (paths, sizes, mtimes; for a table: the table files, not
    the images they name; imagenet: also the labels file; karpathy: also the `images`) and
    options returns the stored summary without work; other sources or options need
    overwrite=True. `columns`: image_column, caption_column, split_column, text_unit, tag_scheme (conll).
    `labels` (imagenet): a labels file, default tensorflow-datasets' validation_labels.txt;
    `images` (karpathy): zips, uncompressed tars or folders, a list or comma-separated.
    workers > 1 start processes with `spawn`: call from under `if __name__ == '__main__':`."""
    _check(name, max_side, val_fraction, workers, max_bad_fraction, columns)
    root = resolve_data_dir(data_dir)
    if paths.is_remote(root):
        return _build_into_bucket(root, source, name, kind=kind, max_side=max_side,
                                  val_fraction=val_fraction, workers=workers,
                                  max_bad_fraction=max_bad_fraction, labels=labels,
                                  images=images, **columns)
    columns = {k: v for k, v in sorted(columns.items()) if v is not None}
    kind, inputs = detect.resolve(os.fspath(source), kind, columns)
    side = _side_inputs(kind, labels, images)
    options = {'format': BUILD_FORMAT, 'kind': kind, 'max_side': max_side,
               'val_fraction': val_fraction, 'columns': columns, **side}
    side_files = [side['labels']] if 'labels' in side else side.get('images', [])
    print_hash = fingerprint(kind, inputs + side_files, options)
    done = store.dataset_path(root, name)
    if done and not overwrite:
        record = store.read_build_record(done)
        if record['fingerprint'] == print_hash:
            print(f'mmjax: dataset {name!r} in {root} is up to date; nothing to do', file=sys.stderr)
            return {**record['summary'], 'path': done}  # The data dir may have moved.
        raise BuildError(f'dataset {name!r} in {root} was built from another source or other '
                         f'options ({record["source"]}); pass --overwrite to replace it')
    if os.path.exists(os.path.join(root, name)) and not done and not overwrite:
        raise BuildError(f'{os.path.join(root, name)} exists and was not made by `mmjax data build`; '
                         'pass another --name, or --overwrite to replace it')
    try:
        os.makedirs(root, exist_ok=True)
        install.clean_stale(root, name)
        temp = install.temp_folder(root, name)
        folder = os.path.join(temp, store.VERSION)
        os.makedirs(folder)
    except OSError as err:
        raise BuildError(f'cannot write to data_dir {root} ({err.strerror or err}); pass --data_dir '
                         'pointing to a writable folder') from None
    try:
        opened = READERS[kind](inputs, columns, **side)
        if val_fraction is None:
            val_fraction = 0.0 if opened.has_splits else DEFAULT_VAL_FRACTION
        summary = _write(opened, folder, name, max_side, val_fraction,
                         workers or min(os.cpu_count() or 1, 8), max_bad_fraction)
        summary.update(kind=kind, path=os.path.join(root, name, store.VERSION))
        summary = json.loads(json.dumps(summary))  # The same types as a stored summary.
        store.write_build_record(folder, {
            'kind': kind, 'source': os.fspath(source), 'options': options,
            'resolved': {'val_fraction': val_fraction}, 'fingerprint': print_hash,
            'features': list(opened.features),
            'class_names': opened.display_names or opened.class_names,  # For prompts.
            'summary': summary})
        install.put_in_place(temp, root, name, replace=overwrite)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return summary
