"""One image file (PNG or JPEG) decoded to uint8 pixels, upright, in one size and channel count.

Every file is untrusted input: it is opened only as a regular file (``open_data``), Pillow's
limit against decompression bombs applies, and a file Pillow cannot read is one ``DataError``
naming it. Used by ``data=folder`` (``folder.py``), which caches what is decoded here.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from vae_lightning.errors import DataError

from .download import describe, open_data

T = TypeVar("T")

# Image files read, by extension (any case).
EXTENSIONS = (".png", ".jpg", ".jpeg")
WHAT = "a PNG or JPEG image"
# Part of every cache key: a change in how images are decoded invalidates old caches.
DECODER_VERSION = 1
# What Pillow raises for a file it cannot decode (a corrupt, truncated or non-image file).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


def _turned(image: Image.Image) -> bool:
    """Whether ``image``'s EXIF orientation swaps its width and height."""
    return image.getexif().get(0x0112) in _TRANSPOSED


def upright_size(image: Image.Image) -> tuple[int, int]:
    """``(H, W)`` of ``image`` as shown: with its EXIF orientation applied."""
    w, h = image.size
    return (w, h) if _turned(image) else (h, w)


def decode(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file as uint8 ``[channels, H, W]`` for ``size = (H, W)``: upright (its EXIF
    orientation applied), in grayscale ("L") or RGB (an alpha channel is dropped; 16-bit
    grayscale keeps its high byte), scaled so that it covers ``size`` (the shorter side fits),
    then centre-cropped to it. An image already of ``size`` keeps its pixels exactly."""
    height, width = size
    with open_data(path, WHAT) as fh, Image.open(fh) as image:
        h, w = upright_size(image)
        turned = _turned(image)
        # A JPEG can decode at 1/2, 1/4 or 1/8 scale, much faster: ask for the smallest scale
        # still at least as large as the resize needs.
        cover = max(width / w, height / h)
        need = (int(np.ceil(w * cover)), int(np.ceil(h * cover)))
        image.draft("L" if channels == 1 else "RGB", need[::-1] if turned else need)
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I"):  # 16-bit grayscale (PNG): keep the high byte
            wide = np.asarray(image).astype(np.int64) >> 8
            image = Image.fromarray(wide.clip(0, 255).astype(np.uint8))
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of the image file ``path`` as shown, from its header alone (nothing is
    decoded)."""
    with open_data(path, WHAT) as fh, Image.open(fh) as image:
        return upright_size(image)


def readable(read: Callable[..., T], path: Path, *args) -> T:
    """``read(path, *args)``, a file that Pillow cannot read being a one-line ``DataError``
    naming it (Pillow's own message is not quoted: it may hold bytes of the file)."""
    try:
        return read(path, *args)
    except DataError:
        raise
    except _DECODE_ERRORS as err:
        why = (f"more than Pillow's {2 * Image.MAX_IMAGE_PIXELS:,} pixels, its limit against "
               "decompression bombs" if isinstance(err, Image.DecompressionBombError)
               else describe(err))
        raise DataError(f"{path} cannot be read as an image ({why}): replace or remove "
                        "it.") from None
