"""Your own images: every PNG and JPEG under a folder, decoded once into a uint8 cache file.

Decoding and resizing thousands of images costs seconds to minutes, an epoch of index slicing
milliseconds: so the images are decoded once, into one uint8 array ``[N, C, H, W]`` saved beside
them, and every later run (and every epoch) reads that array. The cache file is named by a hash of
what it was decoded from (each image's relative path, size in bytes and modification time, and
the output size and channels), so changing, adding or removing an image makes a new one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from vae_lightning.args import PositiveInt, checked, fail

from .datamodules import SplitSize, ValSize, VAEDataModule, held_out
from .download import DataNotFoundError
from .errors import DataError

log = logging.getLogger(__name__)

# Image files read, by extension (any case).
EXTENSIONS = (".png", ".jpg", ".jpeg")
# The cache folder inside the image folder; its fallback under ``root`` when that is read-only.
CACHE_DIR = ".vae-lightning-cache"
FALLBACK_DIR = "folder_cache"
# Part of every cache key: a change in how images are decoded invalidates old caches.
_DECODER_VERSION = 1
# What Pillow raises for a file it cannot decode (a corrupt, truncated or non-image file).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


def scan(directory: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """The images under ``directory``: their paths relative to it in a stable order (sorted by
    path components), their int64 labels and the class names.

    Each first-level subfolder holding images is a class, labelled by its index among the
    sorted class names (images deeper down belong to their first-level folder); images directly
    in ``directory`` are labelled -1. Hidden files and folders (a leading ".", e.g. the cache)
    are skipped; symbolic links are followed, each real folder read once.
    """
    found, seen = [], set()
    for folder, subfolders, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        rel = Path(folder).relative_to(directory)
        found += [rel / f for f in files
                  if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    found.sort(key=lambda p: p.parts)
    classes = tuple(sorted({p.parts[0] for p in found if len(p.parts) > 1}))
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[p.parts[0]] if len(p.parts) > 1 else -1 for p in found], np.int64)
    return found, labels, classes


def decode(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file as uint8 ``[channels, H, W]`` for ``size = (H, W)``: upright (its EXIF
    orientation applied), in grayscale ("L") or RGB (an alpha channel is dropped; 16-bit
    grayscale keeps its high byte), scaled so that it covers ``size`` (the shorter side fits),
    then centre-cropped to it. An image already of ``size`` keeps its pixels exactly."""
    height, width = size
    with Image.open(path) as image:
        w, h = image.size
        turned = image.getexif().get(0x0112) in _TRANSPOSED
        if turned:
            w, h = h, w
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


def _decode_file(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    try:
        return decode(path, size, channels)
    except _DECODE_ERRORS as err:
        raise DataError(f"{path} cannot be read as an image ({type(err).__name__}: "
                        f"{str(err).strip() or 'no detail'}): replace or remove it.") from None


class FolderDataModule(VAEDataModule):
    """Every PNG and JPEG under ``path`` (extensions in any case), optionally in class
    subfolders (``scan``: each first-level subfolder is a class, labelled by its index among
    the sorted subfolder names; images directly in ``path`` get label -1), resized and
    centre-cropped to ``size`` (an int for a square, or ``[H, W]``), with ``channels`` 1
    (grayscale) or 3 (RGB): ``shape = (channels, H, W)``, known from the options alone.

    The images are decoded once (``decode``, on a few threads) into a uint8 ``[N, C, H, W]``
    array saved as ``path/.vae-lightning-cache/<H>x<W>-c<C>-<hash>.npy``; every later setup
    reads that file (``allow_pickle=False``) and never decodes again. The hash covers each
    image's relative path, size in bytes and modification time, and the size and channels, so
    any change to the images makes a new cache (the stale one for the same size and channels
    is removed). The file is written to a temporary file in the same folder and moved into
    place (``os.replace``), so an interrupted run never leaves a partial cache. When ``path``
    is read-only, the cache goes to ``root/folder_cache`` instead (its name also hashes the
    folder's absolute path); when neither can be written, every run decodes them again (with a
    warning). ``prepare_data`` builds the cache, once per machine.

    Splits: ``test_size`` images, then ``val_size`` of the rest, held out by the fixed
    permutation of the built-in sets (the same for every ``seed``), each a number of images or
    a fraction of them (default 10% each); the rest is the training split. ``binarize``:
    "none" (default: grayscale or colour pixels in [0, 1], e.g. for the continuous Bernoulli),
    "static" or "dynamic" (binary pixels, for the Bernoulli likelihood).
    """

    name = "folder"

    @checked
    def __init__(
        self,
        *args,
        path: str | os.PathLike,
        size: PositiveInt | Sequence[PositiveInt] = 64,
        channels: Literal[1, 3] = 3,
        val_size: ValSize = 0.1,
        test_size: SplitSize = 0.1,
        binarize: Literal["none", "static", "dynamic"] = "none",
        **kwargs,
    ) -> None:
        super().__init__(*args, binarize=binarize, **kwargs)
        if not isinstance(size, int) and len(size) != 2:
            fail(self, "size", list(size), "expected an integer or a list [H, W] of two integers")
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.channels = channels
        self.shape = (channels, *self.size)
        self.val_size, self.test_size = val_size, test_size
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataNotFoundError(f"path={str(self.path)!r} is not a folder: expected a folder "
                                    "of PNG or JPEG images (in class subfolders or not).")
        self.classes: tuple[str, ...] = ()
        self._all: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        # Sent to spawned processes without the images: each reads the cache itself.
        return {**self.__dict__, "_all": None}

    def prepare_data(self) -> None:
        self._images()

    def _load(self, names):
        images, labels = self._images()
        idx = held_out(len(images), self.val_size, self.test_size, f"path={str(self.path)!r}")
        return {s: (np.ascontiguousarray(images[idx[s]]), labels[idx[s]]) for s in names}

    def _images(self) -> tuple[np.ndarray, np.ndarray]:
        """All images, uint8 ``[N, C, H, W]`` (from the cache when it is current), and labels:
        the folder is listed once per data module (``prepare_data`` and every ``setup`` of one
        run share it; a change to the images is seen by the next run)."""
        if self._all is None:
            self._all = self._read_or_decode()
        return self._all

    def _read_or_decode(self) -> tuple[np.ndarray, np.ndarray]:
        files, labels, self.classes = scan(self.path)
        if not files:
            raise DataError(f"path={str(self.path)!r} holds no images: expected files ending in "
                            f"{', '.join(EXTENSIONS)} (any case), in it or in its subfolders.")
        key = self._key(files)
        for cache in self._cache_files(key):
            images = _read_cache(cache, (len(files), *self.shape))
            if images is not None:
                return images, labels
        images = self._decode(files)
        self._write_cache(key, images)
        return images, labels

    def _key(self, files: list[Path]) -> str:
        digest = hashlib.sha256(f"v{_DECODER_VERSION} {self.shape}\n".encode())
        for rel in files:
            try:
                stat = (self.path / rel).stat()
            except OSError as err:
                raise DataError(f"{self.path / rel} cannot be read ({err.strerror}): fix its "
                                "permissions, or remove it.") from None
            digest.update(f"{rel.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:24]

    def _cache_files(self, key: str) -> list[Path]:
        """Where the cache of ``key`` is, or goes: beside the images, else under ``root``."""
        c, h, w = self.shape
        folder = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]
        return [self.path / CACHE_DIR / f"{h}x{w}-c{c}-{key}.npy",
                self.root / FALLBACK_DIR / f"{folder}-{h}x{w}-c{c}-{key}.npy"]

    def _decode(self, files: list[Path]) -> np.ndarray:
        start = time.perf_counter()
        log.info("Decoding %d images from %s to %s (once: they are cached)", len(files),
                 self.path, "x".join(map(str, self.shape)))
        images = np.empty((len(files), *self.shape), np.uint8)
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            decoded = pool.map(lambda rel: _decode_file(self.path / rel, self.size,
                                                        self.channels), files)
            for i, pixels in enumerate(decoded):
                images[i] = pixels
        log.info("Decoded %d images in %.1f s", len(files), time.perf_counter() - start)
        return images

    def _write_cache(self, key: str, images: np.ndarray) -> None:
        problems = []
        for cache in self._cache_files(key):
            try:
                _write_atomically(cache, images)
            except OSError as err:
                problems.append(f"{cache.parent}: {err.strerror or err}")
                continue
            for stale in cache.parent.glob(cache.name.removesuffix(f"{key}.npy") + "*.npy"):
                if stale != cache:  # the same images' cache before they changed
                    stale.unlink(missing_ok=True)
            log.info("Cached the decoded images in %s", cache)
            return
        log.warning("Could not write the image cache (%s): the next run decodes the images "
                    "again.", "; ".join(problems))


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached images in ``path`` (memory-mapped), or None when it is absent or unusable."""
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as err:
        log.warning("Ignoring the unreadable image cache %s (%s): decoding again.", path, err)
        return None
    if images.dtype != np.uint8 or images.shape != shape:
        log.warning("Ignoring the image cache %s: it holds %s %s, not uint8 %s; decoding again.",
                    path, images.dtype, images.shape, shape)
        return None
    return images


def _write_atomically(path: Path, array: np.ndarray) -> None:
    """Save ``array`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: readers see the old file or the whole new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
