"""Run and data paths on local disk or in a bucket (gs://, s3://), read and written one way.

Workdirs (checkpoints, metrics.jsonl, config.json, TensorBoard, the best checkpoint) and
data dirs (built datasets, the cached tokenizer vocab) may be URIs. Everything goes through
`etils.epath` (gs:// via gcsfs, installed by `launch/install.sh tpu`); orbax and ArrayRecord
read and write the same URIs themselves. Objects in a bucket cannot be appended to or
renamed atomically, so whole files are written in one upload (atomic on GCS and S3) and a
finished build is marked by the file written last.
"""

import importlib.util
import os
import shutil
import tempfile

import fsspec
from etils import epath

from mmjax.errors import MissingFilesystem

# A bucket's listings are read fresh each time: other processes and hosts write into the
# same run (checkpoint steps, a dataset's marker file, the tokenizer vocab), and gcsfs would
# otherwise answer `exists()` / `iterdir()` from what this process listed earlier.
for _protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def is_remote(path) -> bool:
    """True for a URI (gs://bucket/dir, s3://...), False for a local path."""
    return "://" in os.fspath(path)


def resolve(path) -> epath.Path:
    """`path` as an epath.Path: a local one absolute with `~` expanded (orbax needs absolute
    paths), a URI as given."""
    text = os.fspath(path)
    if not is_remote(text):
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    if text.startswith("gs://") and importlib.util.find_spec("gcsfs") is None:
        raise MissingFilesystem(f"{text}: gs:// paths need gcsfs; install it with "
                                "pip install -e '.[gcs]' (launch/install.sh tpu and gpu do)")
    return epath.Path(text)


def join(base, *parts) -> str:
    """`base/part/...` as a string, for a local path or a URI."""
    return os.fspath(epath.Path(os.fspath(base)).joinpath(*parts)) if is_remote(base) \
        else os.path.join(base, *parts)


def write_text(path, text: str) -> None:
    """Writes a whole text file so a reader sees the old or the new content, never half:
    locally through a temporary file and a rename, in a bucket as one upload."""
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        path.write_text(text)
        return
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False,
                                     suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def upload_tree(local_dir, remote_dir, last: str | None = None) -> None:
    """Copies the files under `local_dir` to `remote_dir`; the file named `last` (relative
    to `local_dir`), if given, goes after all the others, so its presence marks a finished copy."""
    local_dir, remote = os.fspath(local_dir), resolve(remote_dir)
    files = sorted(os.path.relpath(os.path.join(root, name), local_dir)
                   for root, _, names in os.walk(local_dir) for name in names)
    if last is not None:
        files = [f for f in files if f != last] + [last]
    for relative in files:
        target = remote / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(local_dir, relative), "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
