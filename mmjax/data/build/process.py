"""The per-record work done in worker processes: read and verify images, resize, check text."""

from __future__ import annotations

import io

from PIL import Image

from mmjax.data.build.records import Example, Item, Skip
from mmjax.data.images import to_mode

KEPT_FORMATS = ('JPEG', 'MPO', 'PNG', 'WEBP')  # Stored as given; others are re-encoded.
JPEG_QUALITY = 95


def _encode(image: Image.Image) -> bytes:
    """JPEG (quality 95) for opaque images, PNG for those with transparency."""
    out = io.BytesIO()
    if image.mode == 'I' or image.mode.startswith('I;16'):
        image = to_mode(image, 1)  # 16-bit gray: its high byte (Pillow's convert clips at 255)
    if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
        image = image.convert('LA' if image.mode in ('L', 'LA') else 'RGBA')
        image.save(out, format='PNG')
    else:
        image = image if image.mode in ('RGB', 'L') else image.convert('RGB')
        image.save(out, format='JPEG', quality=JPEG_QUALITY)
    return out.getvalue()


def image_bytes(data: bytes, max_side: int | None) -> bytes | None:
    """The bytes to store (as given, or resized so the longer side is <= max_side and re-encoded);
    None when they do not decode in full (corrupt or truncated)."""
    try:
        image = Image.open(io.BytesIO(data))
        resize = max_side is not None and max(image.size) > max_side
        if resize:
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=3.0)
        else:
            image.load()  # Decodes every pixel: a truncated file fails here.
    except Exception:  # pylint: disable=broad-except  # Pillow raises many types on bad data.
        return None
    if resize or image.format not in KEPT_FORMATS:
        return _encode(image)
    return data


class _Bad(Exception):
    """A record's data fails a check; the argument is the skip reason."""


def _text(value, field: str) -> str:
    """The record's text, stripped; raises _Bad when missing, empty or not UTF-8."""
    if value is None:
        raise _Bad(f'missing_{field}')
    if isinstance(value, bytes):
        try:
            value = value.decode('utf-8')
        except UnicodeDecodeError:
            raise _Bad(f'bad_{field}_encoding') from None
    elif not isinstance(value, str):
        value = str(value)
    try:
        value.encode('utf-8')  # Tables read with surrogateescape keep bad bytes as surrogates.
    except UnicodeEncodeError:
        raise _Bad(f'bad_{field}_encoding') from None
    value = value.strip()
    if not value:
        raise _Bad(f'empty_{field}')
    return value


def _captions(values) -> str:
    """An image's captions as one text: each stripped, its line breaks made spaces, empty ones
    dropped, joined with newlines; raises _Bad when none is left or one is not UTF-8."""
    kept = []
    for value in values or ():
        try:
            lines = (line.strip() for line in _text(value, 'caption').splitlines())
            kept.append(' '.join(line for line in lines if line))
        except _Bad as bad:
            if bad.args[0] != 'empty_caption':
                raise
    if not kept:
        raise _Bad('missing_caption')
    return '\n'.join(kept)


def _image(item: Item, max_side: int | None) -> bytes:
    data = item.image_bytes
    if data is None:
        try:
            with open(item.image_path, 'rb') as f:
                data = f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _Bad('missing_file') from None
        except OSError:  # Permissions, I/O errors.
            raise _Bad('unreadable_file') from None
    stored = image_bytes(data, max_side)
    if stored is None:
        raise _Bad('bad_image')
    return stored


def process(item: Item | Skip, features: tuple[str, ...], max_side: int | None) -> Example | Skip:
    """An item turned into an Example, or a Skip naming why not (text is checked first)."""
    if isinstance(item, Skip):
        return item
    field = 'caption' if 'image' in features else 'text'
    try:
        text = _text(item.text, field) if 'text' in features else None
        captions = _captions(item.captions) if 'captions' in features else None
        image = _image(item, max_side) if 'image' in features else None
    except _Bad as bad:
        return Skip(item.where, bad.args[0])
    return Example(key=item.key, split=item.split, image=image, text=text, label=item.label,
                   captions=captions)


def process_chunk(items: list, features: tuple[str, ...], max_side: int | None) -> list:
    """`process` over a chunk (one task sent to a worker)."""
    return [process(item, features, max_side) for item in items]
