"""Image decoding against numpy: 16-bit PNGs (gray 'I;16' and RGB) and uint16 arrays are
scaled to 8 bits by their high byte (v >> 8), not clipped at 255."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mmjax.data import images

# Every high byte, with low bytes that a clip or a rounding rule would treat differently.
_HIGH = np.arange(256)
SIXTEEN = (_HIGH * 256 + _HIGH * 37 % 256).astype(np.uint16).reshape(16, 16)


def _png16(pixels):
    """A 16-bit PNG written here byte by byte (gray [h, w] or RGB [h, w, 3] uint16): Pillow
    writes 16-bit gray but no 16-bit RGB."""
    h, w = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _decoded(image, channels):
    return images.EvalImage(images.ImageOptions(size=16, channels=channels)).map({"image": image})["image"]


def _pil_png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I;16"
    return buffer.getvalue()


@pytest.mark.parametrize("encode", [_pil_png, _png16, lambda x: x], ids=["pillow_png", "own_png", "uint16_array"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_gray_keeps_its_high_byte(encode, channels):
    expected = (SIXTEEN // 256).astype(np.uint8)
    assert expected.max() == 255 and len(np.unique(expected)) == 256
    out = _decoded(encode(SIXTEEN), channels)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], channels, axis=-1))


def test_16_bit_rgb_png_keeps_its_high_byte():
    rgb = np.stack([SIXTEEN, SIXTEEN.T, 65535 - SIXTEEN], axis=-1)
    np.testing.assert_array_equal(_decoded(_png16(rgb), 3), (rgb // 256).astype(np.uint8))
    np.testing.assert_array_equal(_decoded(rgb, 3), (rgb // 256).astype(np.uint8))  # as a uint16 array


def test_16_bit_pil_image_to_mode():
    gray = Image.open(io.BytesIO(_pil_png(SIXTEEN)))
    np.testing.assert_array_equal(np.asarray(images.to_mode(gray, 1)), SIXTEEN // 256)


@pytest.mark.parametrize("fmt,max_side", [("PNG", 32), ("TIFF", None)])
def test_data_build_re_encodes_16_bit_gray_by_its_high_byte(fmt, max_side):
    """`mmjax data build` re-encodes a resized image or a format it does not keep (TIFF): a flat
    16-bit gray 40000 is 40000 >> 8 = 156 after it (within JPEG's rounding), not 255."""
    from mmjax.data.build.process import image_bytes
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(buffer, format=fmt)
    stored = image_bytes(buffer.getvalue(), max_side)
    out = _decoded(stored, 1)
    assert np.abs(out.astype(int) - 40000 // 256).max() <= 1, np.unique(out)
