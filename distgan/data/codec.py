"""Image bytes in shards, encoded and decoded in one place so that prepare and the readers agree."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

FORMATS = ("jpg", "png", "raw")
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """An "L" or "RGB" image as the bytes of one shard member named KEY.<fmt>."""
    if fmt == "raw":
        pixels = np.asarray(img, dtype=np.uint8)
        return (pixels[:, :, None] if pixels.ndim == 2 else pixels).tobytes()
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r}; one of {FORMATS}")
    return buf.getvalue()


def decode_image(sample: dict, image_size: int, channels: int) -> np.ndarray:
    """HWC uint8 array, or raises ValueError naming what is wrong."""
    if "raw" in sample:
        arr = np.frombuffer(sample["raw"], dtype=np.uint8)
        if arr.size != image_size * image_size * channels:
            raise ValueError(f"raw image has {arr.size} bytes, expected {image_size}x{image_size}x{channels}")
        return arr.reshape(image_size, image_size, channels)
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"no image in sample (members: {sorted(k for k in sample if not k.startswith('__'))})")
    with open_header(io.BytesIO(sample[key])) as img:
        if img.size != (image_size, image_size):  # before decoding: a small file can claim a huge image
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}, expected {image_size}x{image_size}")
        img.load()
        mode = "L" if channels == 1 else "RGB"
        arr = np.asarray(img if img.mode == mode else img.convert(mode))
    return arr[:, :, None] if channels == 1 else arr


def open_header(source) -> Image.Image:
    """Image.open (header only), without Pillow's bomb warning: the callers check the size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)
