"""`mmjax data build`: a user's images+captions, image folder or text as a tfds ArrayRecord dataset.

    from mmjax.data import build
    summary = build.build('shards/{00000..00009}.tar', 'my_pairs')   # -> data_dir/my_pairs/1.0.0
    source = build.open_split(None, 'my_pairs', 'train')            # len(source), source[i]

Records read back as dicts: 'image' -> encoded bytes (JPEG/PNG/WebP), 'text' -> UTF-8 bytes,
'label' -> int. Splits: 'train', 'validation' (and 'test' when the source names one).
"""

from mmjax.data.build.detect import KINDS
from mmjax.data.build.records import BuildError
from mmjax.data.build.run import build
from mmjax.data.build.store import dataset_path, list_built, open_split, read_info

__all__ = ['KINDS', 'BuildError', 'build', 'dataset_path', 'list_built', 'open_split', 'read_info']
