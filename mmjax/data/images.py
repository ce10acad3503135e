"""Image transforms: decode, random-resized-crop (train) or resize + centre-crop (eval), to
`data.image_size` with `data.image_channels`, as uint8; `normalise` makes model inputs.

Images arrive as encoded bytes (JPEG/PNG/WebP, as `mmjax data build` stores them) or as
uint8 arrays (the built-in digits); 16-bit images (PNG, uint16 arrays) keep their high byte.
JPEGs are decoded by simplejpeg (libjpeg-turbo) at the smallest n/8 DCT scale that still covers the crop at the output size, then resized with
Pillow's bicubic filter; other formats by Pillow. Chosen by measurement
(benchmarks/image_decoders.py): 1.3-1.5x Pillow at web sizes (<= 640 px), ~4x at 2048 px,
within 1.3/255 of Pillow's full decode; OpenCV's resize was ~20% faster still, but a 150 MB
dependency and further from the bicubic output open_clip users compare against.
"""

from __future__ import annotations

import dataclasses
import io
import math

import grain
import numpy as np
import simplejpeg
from PIL import Image

from mmjax.errors import BadImage

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP's preprocessing statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROPS = ('random_resized', 'resize', 'center')


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How training and evaluation images are made (from `config.data`)."""

    size: int = 224
    channels: int = 3
    crop: str = 'random_resized'          # training crop: one of CROPS
    crop_scale: tuple = (0.9, 1.0)        # random_resized: area fraction (open_clip's default)
    crop_ratio: tuple = (3 / 4, 4 / 3)    # random_resized: aspect ratio range
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    @classmethod
    def from_config(cls, data) -> ImageOptions:
        get = lambda key, default: tuple(data[key]) if isinstance(default, tuple) else data[key]
        fields = {f.name: get(key, f.default) for f, key in zip(
            dataclasses.fields(cls), ('image_size', 'image_channels', 'crop', 'crop_scale',
                                      'crop_ratio', 'mean', 'std')) if key in data}
        return cls(**fields)


def _open(image) -> Image.Image:
    """bytes or uint8 [h, w(, c)] -> a PIL image (lazy for bytes: not decoded yet)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        if not len(image):
            raise BadImage('empty image bytes')
        try:
            return Image.open(io.BytesIO(image))
        except Exception as err:  # PIL raises several types for foreign bytes
            raise BadImage(f'not an image ({err})') from None
    array = np.asarray(image)
    if array.dtype == np.uint16:
        array = to_8bit(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """16-bit pixel values -> uint8: the high byte (v >> 8), as Pillow decodes 16-bit RGB(A)
    PNGs and torchvision's convert_image_dtype narrows uint16; 32-bit integer ('I') images
    are read as 16-bit and clipped to it."""
    return (np.clip(np.asarray(pixels, np.int64), 0, 65535) >> 8).astype(np.uint8)


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """`image` as 'L' (channels=1) or 'RGB': transparency onto white, 16-bit gray scaled to
    8 bits (Pillow's own conversion clips it at 255)."""
    mode = 'L' if channels == 1 else 'RGB'
    if image.mode == mode:
        return image
    if image.mode == 'I' or image.mode.startswith('I;16'):
        image = Image.fromarray(to_8bit(np.asarray(image)), 'L')
        return image if mode == 'L' else image.convert(mode)
    if image.mode in ('RGBA', 'LA', 'P') and mode == 'RGB':  # transparency onto white
        rgba = image.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert('RGB')
    return image.convert(mode)


def random_crop_box(width, height, rng: np.random.Generator, scale, ratio):
    """(left, top, right, bottom) of a random-resized crop: area a fraction `scale` of the
    image, aspect ratio log-uniform in `ratio`; falls back to the largest centred crop with
    the ratio clipped to the range (torchvision's rule)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width, height):
    """The largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_resize(image, box_fn, options: ImageOptions) -> np.ndarray:
    """Decodes `image`, crops box_fn(width, height) and resizes it to uint8 [S, S, C]."""
    size = options.size
    if (isinstance(image, np.ndarray) and image.dtype == np.uint8
            and image.shape == (size, size, options.channels)
            and box_fn(size, size) == (0, 0, size, size)):
        return image   # already the output (the built-in digits at their own size)
    if isinstance(image, (bytes, bytearray)) and image[:2] == b'\xff\xd8':
        try:
            return _jpeg_crop_resize(bytes(image), box_fn, options)
        except ValueError:
            pass   # a JPEG libjpeg-turbo rejects: Pillow's decoder decides (and names the error)
    try:
        im = _open(image)
        width, height = im.size
        box = box_fn(width, height)
        im = to_mode(im, options.channels)
        if box == (0, 0, *im.size) and im.size == (size, size):
            out = np.asarray(im)
        else:
            out = np.asarray(im.resize((size, size), Image.BICUBIC, box=box))
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImage(f'cannot decode ({err})') from None
    return out[..., None] if out.ndim == 2 else out


def _jpeg_crop_resize(data: bytes, box_fn, options: ImageOptions) -> np.ndarray:
    """crop_resize of a JPEG with simplejpeg: decoded at the smallest n/8 scale whose crop is
    at least the output size (never above full size)."""
    size = options.size
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    left, top, right, bottom = box_fn(width, height)
    pixels = simplejpeg.decode_jpeg(
        data, colorspace='RGB' if options.channels == 3 else 'GRAY',
        min_height=min(height, math.ceil(size * height / (bottom - top))),
        min_width=min(width, math.ceil(size * width / (right - left))))
    scale = round(8 * pixels.shape[1] / width) / 8    # the n/8 scale libjpeg-turbo picked
    im = Image.fromarray(pixels if options.channels == 3 else pixels[..., 0])
    out = np.asarray(im.resize((size, size), Image.BICUBIC,
                               box=(left * scale, top * scale, right * scale, bottom * scale)))
    return out[..., None] if out.ndim == 2 else out


class TrainImage(grain.transforms.RandomMap):
    """'image' -> uint8 [S, S, C]: the configured training crop."""

    def __init__(self, options: ImageOptions):
        self.options = options

    def random_map(self, element, rng: np.random.Generator):
        o = self.options
        if o.crop == 'random_resized':
            box_fn = lambda w, h: random_crop_box(w, h, rng, o.crop_scale, o.crop_ratio)
        elif o.crop == 'center':
            box_fn = center_crop_box
        else:  # 'resize': the whole image, squashed to a square
            box_fn = lambda w, h: (0, 0, w, h)
        return {**element, 'image': crop_resize(element['image'], box_fn, o)}


class EvalImage(grain.transforms.Map):
    """'image' -> uint8 [S, S, C]: resize the shorter side, centre crop (squares: resize only)."""

    def __init__(self, options: ImageOptions):
        self.options = options

    def map(self, element):
        return {**element, 'image': crop_resize(element['image'], center_crop_box, self.options)}


def normalise(images: np.ndarray, options: ImageOptions) -> np.ndarray:
    """uint8 [b, S, S, C] -> float32 (x / 255 - mean) / std per channel (grey: the means of
    the RGB statistics)."""
    mean, std = np.asarray(options.mean, np.float32), np.asarray(options.std, np.float32)
    if images.shape[-1] != len(mean):
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    return (images.astype(np.float32) * np.float32(1 / 255) - mean) / std
