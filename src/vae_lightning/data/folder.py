"""Your own images: every PNG and JPEG under a folder, decoded once into a uint8 cache file.

Decoding (and resizing) thousands of images costs seconds to minutes, an epoch of index slicing
milliseconds: so the images are decoded once, into one uint8 array ``[N, C, H, W]``, and every
later run (and every epoch) reads that array. The cache is kept under the data root
(``root/folder_cache``, or the folder ``cache`` names), never in the image folder, in a subfolder
named by a hash of the image folder's resolved path; the cache file is named by a hash of what it
was decoded from (each image's relative path, size in bytes and modification time, and the output
size and channels), so changing, adding or removing an image makes a new one.

By default the images keep their own size, which they must then share (a model is built for one
image shape); ``size`` resizes and centre-crops them all to one. Every file is untrusted input:
only regular files are opened (a FIFO named ``x.png`` would block the run forever; a dangling
link is named as such), Pillow's limit against decompression bombs applies to each image, and
the decoded array must fit in the memory available before it is allocated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from vae_lightning.args import PositiveInt, checked, fail
from vae_lightning.errors import DataError
from vae_lightning.files import kind

from .datamodules import VAEDataModule
from .download import (
    DataNotFoundError,
    check_memory,
    describe,
    not_regular,
    open_data,
)
from .images import DECODER_VERSION, EXTENSIONS, WHAT, decode, image_size, readable
from .npy import atomic_npy, check_holds, map_npy, read_header
from .splits import SplitSize, ValSize, held_out

log = logging.getLogger(__name__)
T = TypeVar("T")

# The caches' folder under ``root`` (unless ``cache`` names another).
CACHE_DIR = "folder_cache"


def scan(directory: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """The images under ``directory``: their paths relative to it in a stable order (sorted by
    path components), their int64 labels and the class names.

    Each first-level subfolder holding images is a class, labelled by its index among the
    sorted class names (images deeper down belong to their first-level folder); images directly
    in ``directory`` are labelled -1. Hidden files and folders (a leading ".") are skipped;
    symbolic links are followed, each real folder read once; a folder that cannot be listed is
    an error (its images are not silently left out).
    """
    found, seen = [], set()
    for folder, subfolders, names in os.walk(directory, onerror=_unlistable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        rel = Path(folder).relative_to(directory)
        found += [rel / f for f in names
                  if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    found.sort(key=lambda p: p.parts)
    classes = tuple(sorted({p.parts[0] for p in found if len(p.parts) > 1}))
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[p.parts[0]] if len(p.parts) > 1 else -1 for p in found], np.int64)
    return found, labels, classes


def _unlistable(err: OSError) -> None:
    raise DataError(f"{err.filename} cannot be listed ({describe(err)}): fix its permissions, "
                    "or move it out of data.path.")



class FolderDataModule(VAEDataModule):
    """Every PNG and JPEG under ``path`` (extensions in any case), optionally in class
    subfolders (``scan``: each first-level subfolder is a class, labelled by its index among
    the sorted subfolder names; images directly in ``path`` get label -1), with ``channels`` 1
    (grayscale) or 3 (RGB). ``size``: None (default) keeps the images' own size, which they
    must all share (else a ``DataError`` names two files of different sizes); an int (a square)
    or ``[H, W]`` resizes and centre-crops every image to it. ``shape = (channels, H, W)`` is
    known in ``__init__``: from the options, or (``size=None``) from the cache, else from the
    images' headers.

    The images are decoded once (``decode``, on a few threads) into a uint8 ``[N, C, H, W]``
    array saved as ``<cache>/<folder hash>/<H>x<W>-c<C>-<hash>.npy`` (``native`` for
    ``<H>x<W>`` when ``size=None``), where ``<cache>`` is ``cache`` or, by default,
    ``root/folder_cache``, and ``<folder hash>`` hashes the resolved ``path``; every later
    setup reads that file (memory-mapped, ``allow_pickle=False``) and never decodes again. The
    file's hash covers each image's relative path, size in bytes and modification time, and
    the size and channels, so any change to the images makes a new cache (the stale one for
    the same size and channels is removed). It is written to a temporary file in the same
    folder and moved into place (``os.replace``), so an interrupted run never leaves a partial
    cache; when it cannot be written, every run decodes the images again (with a warning
    naming the folder). ``prepare_data`` builds the cache, once per machine.

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
        size: PositiveInt | Sequence[PositiveInt] | None = None,
        channels: Literal[1, 3] = 3,
        cache: str | os.PathLike | None = None,
        val_size: ValSize = 0.1,
        test_size: SplitSize = 0.1,
        binarize: Literal["none", "static", "dynamic"] = "none",
        **kwargs,
    ) -> None:
        super().__init__(*args, binarize=binarize, **kwargs)
        if size is not None and not isinstance(size, int) and len(size) != 2:
            fail(self, "size", list(size), "expected null (the images' own size), an integer "
                 "or a list [H, W] of two integers")
        self.size = (None if size is None else (size, size) if isinstance(size, int)
                     else (int(size[0]), int(size[1])))
        self.channels = channels
        self.val_size, self.test_size = val_size, test_size
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataNotFoundError(f"data.path={str(self.path)!r} is not a folder: expected a "
                                    "folder of PNG or JPEG images (in class subfolders or not).")
        folder = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        self.cache_dir = (self.root / CACHE_DIR if cache is None else Path(cache)) / folder
        self.classes: tuple[str, ...] = ()
        self._listing: tuple[list[Path], np.ndarray, str] | None = None
        self._all: tuple[np.ndarray, np.ndarray] | None = None
        self.shape = (channels, *(self.size or self._own_size()))

    def __getstate__(self) -> dict:
        # Sent to spawned processes without the images: each reads the cache itself.
        return {**self.__dict__, "_all": None}

    def prepare_data(self) -> None:
        self._images()

    def _load(self, names):
        images, labels = self._images()
        idx = held_out(len(images), self.val_size, self.test_size, f"data.path={str(self.path)!r}")
        self.rows.update({split: idx[split] for split in names})
        return {s: (np.ascontiguousarray(images[idx[s]]), labels[idx[s]]) for s in names}

    def _images(self) -> tuple[np.ndarray, np.ndarray]:
        """All images, uint8 ``[N, C, H, W]`` (from the cache when it is current), and labels:
        the folder is listed once per data module (``__init__``, ``prepare_data`` and every
        ``setup`` of one run share it; a change to the images is seen by the next run)."""
        if self._all is None:
            self._all = self._read_or_decode()
        return self._all

    def _list(self) -> tuple[list[Path], np.ndarray, str]:
        """The image files, their labels and the cache key, listed once."""
        if self._listing is None:
            files, labels, self.classes = scan(self.path)
            if self.classes:  # which subfolder is which label was said nowhere
                shown = ", ".join(f"{i} {name!r}" for i, name in enumerate(self.classes[:20]))
                log.info("data.path=%r: %d class subfolders, labelled in sorted order: %s%s.",
                         str(self.path), len(self.classes), shown,
                         ", ..." if len(self.classes) > 20 else "")
            if not files:
                raise DataError(f"data.path={str(self.path)!r} holds no images: expected files "
                                f"ending in {', '.join(EXTENSIONS)} (any case), in it or in its "
                                "subfolders.")
            self._listing = files, labels, self._key(files)
        return self._listing

    def _own_size(self) -> tuple[int, int]:
        """``(H, W)`` shared by all the images (``size=None``): the cache's, when there is a
        current one, else read from every image's header; a ``DataError`` naming two files of
        different sizes when they differ."""
        files, _, key = self._list()
        cached = _read_cache(self._cache_file(key), (len(files), self.channels, None, None))
        if cached is not None:
            return cached.shape[2], cached.shape[3]
        sizes = self._map(lambda rel: readable(image_size, self.path / rel), files)
        for rel, size in zip(files, sizes, strict=True):
            if size != sizes[0]:
                raise DataError(
                    f"data.path={str(self.path)!r} holds images of different sizes, e.g. "
                    f"{self.path / files[0]} ({sizes[0][0]}x{sizes[0][1]}) and "
                    f"{self.path / rel} ({size[0]}x{size[1]}), height x width, and data.size is "
                    "null (the images' own size): set data.size to an integer (a square) or "
                    "[H, W] to resize and centre-crop them all to it.")
        return sizes[0]

    def _read_or_decode(self) -> tuple[np.ndarray, np.ndarray]:
        files, labels, key = self._list()
        cache = self._cache_file(key)
        images = _read_cache(cache, (len(files), *self.shape))
        if images is None:
            images = self._decode(files)
            self._write_cache(cache, images)
        return images, labels

    def _key(self, files: list[Path]) -> str:
        """The hash of what the cache is decoded from; each file checked to be a regular one
        (a FIFO would block the decoding forever)."""
        spec = "native" if self.size is None else self.size
        digest = hashlib.sha256(f"v{DECODER_VERSION} {spec} c{self.channels}\n".encode())
        for rel in files:
            path = self.path / rel
            try:
                found = kind(path)
                stat = path.stat() if found is None else None
            except OSError as err:
                raise DataError(f"{path} cannot be read ({describe(err)}): fix its permissions, "
                                "or remove it.") from None
            if stat is None:
                raise not_regular(str(path), found, WHAT)
            digest.update(f"{rel.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:24]

    def _cache_file(self, key: str) -> Path:
        spec = "native" if self.size is None else "x".join(map(str, self.size))
        return self.cache_dir / f"{spec}-c{self.channels}-{key}.npy"

    def _map(self, fn: Callable[[Path], T], files: list[Path]) -> list[T]:
        """``fn`` of every file, in order, on a few threads (the work is mostly I/O and Pillow's
        C code, which releases the GIL)."""
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(fn, files))

    def _decode(self, files: list[Path]) -> np.ndarray:
        start = time.perf_counter()
        check_memory(len(files) * int(np.prod(self.shape)),
                     f"data.path={str(self.path)!r} holds {len(files):,} images of "
                     f"{'x'.join(map(str, self.shape))} (channels x height x width)",
                     "set data.size to a smaller size, or data.channels=1 for colour images")
        log.info("Decoding %d images from %s to %s (once: they are cached)", len(files),
                 self.path, "x".join(map(str, self.shape)))
        images = np.empty((len(files), *self.shape), np.uint8)
        decoded = self._map(lambda rel: readable(decode, self.path / rel, self.shape[1:],
                                                  self.channels), files)
        for i, pixels in enumerate(decoded):
            images[i] = pixels
        log.info("Decoded %d images in %.1f s", len(files), time.perf_counter() - start)
        if self.channels == 3 and (images[:, 1:] == images[:, :1]).all():
            log.warning("The %d images in %s are all grey (their three channels equal), and "
                        "data.channels=3 (the default) models three copies of each pixel: "
                        "data.channels=1 models one (a third of the input, and a bound in nats "
                        "per image that compares with other grey data's).", len(files),
                        self.path)
        return images

    def _write_cache(self, cache: Path, images: np.ndarray) -> None:
        try:
            _write_atomically(cache, images)
        except OSError as err:
            log.warning("Could not write the image cache in %s (%s): the next run decodes the "
                        "images again; set data.cache to a writable folder.", cache.parent,
                        describe(err))
            return
        for stale in cache.parent.glob(cache.name.rsplit("-", 1)[0] + "-*.npy"):
            if stale != cache:  # the same images' cache before they changed
                stale.unlink(missing_ok=True)
        log.info("Cached the decoded images in %s", cache)


def _read_cache(path: Path, shape: tuple[int | None, ...]) -> np.ndarray | None:
    """The cached images in ``path`` (memory-mapped), or None when it is absent or unusable;
    ``shape`` is the expected one, None for an axis that may be any size."""
    try:
        if kind(path) == "missing":
            return None
        with open_data(path, "an image cache (.npy)") as fh:
            header = read_header(fh, str(path))
            if header.dtype != np.uint8 or len(header.shape) != len(shape) or any(
                    want not in (None, got) for want, got in zip(shape, header.shape)):
                log.warning("Ignoring the image cache %s: it holds %s, not uint8 %s; decoding "
                            "again.", path, header.describe(), list(shape))
                return None
            check_holds(header, os.fstat(fh.fileno()).st_size - header.offset, str(path))
            return map_npy(fh, header)
    except (DataError, OSError, ValueError) as err:
        log.warning("Ignoring the unreadable image cache %s (%s): decoding again.", path,
                    err if isinstance(err, DataError) else describe(err))
        return None


def _write_atomically(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as a ``.npy`` to ``path`` atomically (``npy.atomic_npy``): readers see the
    old file or the whole new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_npy(path, array.shape, array.dtype) as append:
        append(array)
