"""Image bytes inside shards: encoding (prepare) and decoding (the readers), in one place so that they agree.

Formats (the member's extension says which one a sample uses):
- png: lossless.
- jpg: quality 95 with full-resolution colour (4:4:4): chroma subsampling smears colour at 32-64 px.
- raw: the HWC uint8 pixels, size x size x channels bytes, no header; the manifest carries size and channels and
  the reader checks the byte count. The fastest to read, the largest on disk.
"""

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
    """Image.open (it reads the header only), without Pillow's bomb warning: the caller checks the size itself and
    says so in its skip message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)
