"""Which kind of source SOURCE is, and the files it names (brace ranges, globs, folders)."""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import tarfile

from mmjax.data.build.records import BuildError

KINDS = ('table', 'webdataset', 'imagefolder', 'text', 'imagenet', 'karpathy', 'conll')
CONLL_SUFFIXES = ('.conll', '.bio', '.iob', '.iobes')
ONE_INPUT = {'imagenet': 'ILSVRC2012_img_val.tar or a folder of ILSVRC2012_val_*.JPEG',
             'karpathy': 'the Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json)'}
IMAGENET_VAL_FILE = re.compile(r'^ILSVRC2012_val_(\d{8})\.[Jj][Pp][Ee]?[Gg]$')
TABLE_SUFFIXES = ('.csv', '.tsv', '.jsonl', '.parquet')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.tif', '.tiff')
IMAGE_COLUMNS = ('image', 'image_path', 'filepath', 'path', 'file', 'filename',
                 'jpg', 'png', 'webp')  # The last three: img2dataset parquet holds image bytes.
CAPTION_COLUMNS = ('caption', 'text', 'title')
SPLIT_COLUMNS = ('split',)
_BRACE = re.compile(r'\{([^{}]*)\}')
_RANGE = re.compile(r'^(\d+)\.\.(\d+)$')


def expand_braces(pattern: str) -> list[str]:
    """'a/{00000..00002}.tar' -> ['a/00000.tar', 'a/00001.tar', 'a/00002.tar'] (zero padding kept);
    '{x,y}' lists too; several braces multiply."""
    parts, choices, pos = [], [], 0
    for match in _BRACE.finditer(pattern):
        parts.append(pattern[pos:match.start()])
        body = match.group(1)
        numbers = _RANGE.match(body)
        if numbers:
            first, last = numbers.groups()
            width = len(first) if first.startswith('0') else 0
            choices.append([str(i).zfill(width) for i in range(int(first), int(last) + 1)])
        elif ',' in body:
            choices.append(body.split(','))
        else:
            raise BuildError(f'cannot read the brace {{{body}}} in {pattern!r}: use a range like '
                             '{00000..00099} or a list like {a,b}')
        pos = match.end()
    parts.append(pattern[pos:])
    return [''.join(p for pair in itertools.zip_longest(parts, combo, fillvalue='') for p in pair)
            for combo in itertools.product(*choices)]


def _is_pattern(source: str) -> bool:
    return bool(_BRACE.search(source)) or glob.has_magic(source)


def _files_of_pattern(source: str) -> list[str]:
    """Files a brace/glob pattern names; a brace range naming missing files is an error."""
    files = []
    for pattern in expand_braces(source):
        if glob.has_magic(pattern):
            files += sorted(glob.glob(os.path.expanduser(pattern)))
        else:
            files.append(os.path.expanduser(pattern))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise BuildError(f'{len(missing)} of the {len(files)} files that {source!r} names do not '
                         f'exist (e.g. {missing[0]}); fix the range or use a glob')
    if not files:
        raise BuildError(f'no files match {source!r}; check the pattern')
    return [os.path.abspath(f) for f in files]


def _jsonl_is_text(path: str, columns: dict) -> bool:
    """A JSONL file is a text corpus when its first record has a text field and no image column."""
    with open(path, 'rb') as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError as err:
                    raise BuildError(f'{path} line 1 is not JSON ({err}); fix the file') from None
                break
        else:
            raise BuildError(f'{path} is empty; point SOURCE at a file with records')
    if not isinstance(record, dict):
        raise BuildError(f'{path}: records must be JSON objects; fix the file')
    image_columns = [columns['image_column']] if columns.get('image_column') else IMAGE_COLUMNS
    text_field = columns.get('caption_column') or 'text'
    return text_field in record and not any(c in record for c in image_columns)


def _is_imagenet_tar(path: str) -> bool:
    """The tar's first file is named like an ImageNet validation image."""
    try:
        with tarfile.open(path, mode='r|*') as tar:
            first = next((m for m in tar if m.isfile()), None)
    except (tarfile.TarError, EOFError, OSError):
        return False  # The webdataset reader reports what is wrong with it.
    return first is not None and bool(IMAGENET_VAL_FILE.match(os.path.basename(first.name)))


def _kind_of_files(files: list[str], source: str, columns: dict) -> str:
    suffixes = {os.path.splitext(f)[1].lower() for f in files}
    if suffixes == {'.tar'} and len(files) == 1 and _is_imagenet_tar(files[0]):
        return 'imagenet'
    if suffixes == {'.tar'}:
        return 'webdataset'
    if suffixes == {'.json'} and len(files) == 1:
        return 'karpathy'  # The only kind read from a .json; its reader checks for "images".
    if suffixes == {'.txt'}:
        return 'text'
    if suffixes <= set(CONLL_SUFFIXES):
        return 'conll'
    if suffixes == {'.jsonl'} and _jsonl_is_text(files[0], columns):
        return 'text'
    if suffixes <= set(TABLE_SUFFIXES):
        return 'table'
    found = ', '.join(sorted(suffixes))
    raise BuildError(f'cannot tell the kind of {source!r} from its files ({found}); '
                     f'pass --kind ({"|".join(KINDS)})')


def _visible(names):
    return sorted(n for n in names if not n.startswith('.'))


def _folder_files(folder: str, suffixes) -> list[str]:
    return [os.path.join(folder, n) for n in _visible(os.listdir(folder))
            if n.lower().endswith(suffixes) and os.path.isfile(os.path.join(folder, n))]


def has_class_folders(folder: str) -> bool:
    """Some subfolder of `folder` holds an image file (at any depth)."""
    for sub in _visible(os.listdir(folder)):
        path = os.path.join(folder, sub)
        if os.path.isdir(path):
            for _, _, names in os.walk(path):
                if any(n.lower().endswith(IMAGE_SUFFIXES) for n in names):
                    return True
    return False


def _kind_of_folder(folder: str, columns: dict) -> str:
    if any(IMAGENET_VAL_FILE.match(n) for n in os.listdir(folder)):
        return 'imagenet'
    if _folder_files(folder, ('.tar',)):
        return 'webdataset'  # img2dataset's output folder: tars (+ parquet/json metadata).
    if has_class_folders(folder):
        return 'imagefolder'
    if _folder_files(folder, ('.txt',)):
        return 'text'
    if _folder_files(folder, CONLL_SUFFIXES):
        return 'conll'
    tables = _folder_files(folder, TABLE_SUFFIXES)
    if tables and all(t.endswith('.jsonl') for t in tables) and _jsonl_is_text(tables[0], columns):
        return 'text'
    if tables:
        return 'table'
    raise BuildError(f'cannot tell the kind of folder {folder!r}: it holds no .tar shards, class '
                     'folders of images, .txt files, tables or ImageNet validation images; pass '
                     '--kind or another SOURCE')


def _folder_inputs(folder: str, kind: str) -> list[str]:
    """The files a folder SOURCE stands for (imagefolder, imagenet: the folder itself)."""
    if kind in ('imagefolder', 'imagenet'):
        return [folder]
    if kind == 'karpathy':
        raise BuildError(f'--kind karpathy reads {ONE_INPUT[kind]}, not the folder {folder!r}; '
                         'pass the images with --images')
    if kind == 'conll':   # its .conll / .bio / ... files, else all (eng.train, eng.testa)
        files = _folder_files(folder, CONLL_SUFFIXES) or _folder_files(folder, '')
        if not files:
            raise BuildError(f'folder {folder!r} holds no files for kind conll; pass another SOURCE')
        return files
    suffixes = {'webdataset': ('.tar',), 'text': ('.txt', '.jsonl'), 'table': TABLE_SUFFIXES}[kind]
    files = _folder_files(folder, suffixes)
    if kind == 'text' and any(f.endswith('.txt') for f in files):
        files = [f for f in files if f.endswith('.txt')]
    if kind == 'table':
        found = {os.path.splitext(f)[1] for f in files}
        if len(found) > 1:  # img2dataset folders hold one table per shard, all of one format.
            preferred = next(s for s in ('.parquet', '.jsonl', '.csv', '.tsv') if s in found)
            files = [f for f in files if f.endswith(preferred)]
    if not files:
        raise BuildError(f'folder {folder!r} holds no {"/".join(suffixes)} files for kind {kind}; '
                         'pass another SOURCE or --kind')
    return files


def resolve(source: str, kind: str | None, columns: dict) -> tuple[str, list[str]]:
    """(kind, inputs): inputs are the files to read, or [root] for an image folder."""
    if kind is not None and kind not in KINDS:
        raise BuildError(f'unknown --kind {kind!r}; valid kinds: {", ".join(KINDS)}')
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        kind = kind or _kind_of_folder(path, columns)
        return kind, _folder_inputs(path, kind)
    if os.path.isfile(path):
        files = [path]
    elif _is_pattern(source):
        files = _files_of_pattern(source)
    else:
        raise BuildError(f'SOURCE {source!r} does not exist; pass a file, a folder or a pattern '
                         "like 'shards/{00000..00009}.tar'")
    if kind == 'imagefolder':
        raise BuildError(f'--kind imagefolder needs a folder, not {source!r}')
    kind = kind or _kind_of_files(files, source, columns)
    if kind in ONE_INPUT and len(files) != 1:
        raise BuildError(f'--kind {kind} reads one SOURCE, {ONE_INPUT[kind]}; {source!r} names '
                         f'{len(files)} files')
    return kind, files


def _tree(root: str) -> list[str]:
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = _visible(subfolders)
        files += [os.path.join(folder, n) for n in _visible(names)]
    return files


def input_files(kind: str, inputs: list[str]) -> list[str]:
    """Every file whose path, size and mtime make up the fingerprint: the files of `inputs`, a
    folder's whole tree (an image folder, a folder of ImageNet or Karpathy --images)."""
    del kind  # Any kind: a folder among the inputs stands for its files.
    files = []
    for path in inputs:
        files += _tree(path) if os.path.isdir(path) else [path]
    return sorted(files)
