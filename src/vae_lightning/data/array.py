"""Your own images as one NumPy array file (``.npy`` or ``.npz``), read without unpickling.

A ``.npy`` file, and each array of a ``.npz`` (a zip of ``.npy`` files), starts with a short
header giving the array's dtype and shape: reading only that header tells the image shape the
model is built for, before any data is loaded. An array of Python objects is refused: loading it
would unpickle it, and unpickling runs whatever code the file names.
"""

from __future__ import annotations

import os
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import IO, Literal, NamedTuple

import numpy as np

from vae_lightning.args import checked

from .datamodules import SplitSize, ValSize, VAEDataModule, held_out
from .download import DataNotFoundError
from .errors import DataError

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"  # a zip: a member, or the end of an empty one
# Channel counts that mark an axis as the channels in ``layout="auto"``.
_CHANNELS = (1, 3)


class Header(NamedTuple):
    """What an array's header says: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype


def read_header(fh: IO[bytes], where: str) -> Header:
    """The header of the ``.npy`` data in ``fh``, read without loading (or unpickling) the
    array; a ``DataError`` naming ``where`` when it is not a ``.npy`` header."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    except (ValueError, SyntaxError, EOFError, tokenize.TokenError) as err:  # a bad header
        raise DataError(f"{where} is not a readable .npy array ({err}): save it with "
                        "numpy.save or numpy.savez.") from None
    return Header(tuple(int(d) for d in shape), np.dtype(dtype))


def resolve_layout(shape: tuple[int, ...], layout: str, where: str) -> str:
    """The layout of images in an array of ``shape``: ``"nhw"`` for ``[N, H, W]`` (C = 1), else
    ``layout``, ``"nchw"`` (``[N, C, H, W]``) or ``"nhwc"`` (``[N, H, W, C]``). ``"auto"``
    takes a 4-d array as channels-last when its last axis is 1 or 3 and its second is not, else
    as channels-first: ``[N, 28, 28, 1]`` and ``[N, 32, 32, 3]`` are channels-last,
    ``[N, 3, 32, 32]`` and ``[N, 1, 28, 28]`` channels-first, and so is the ambiguous
    ``[N, 3, 32, 3]`` (say ``layout=nhwc`` if it is not)."""
    if len(shape) == 3 and 0 not in shape[1:]:
        return "nhw"
    if len(shape) != 4 or 0 in shape[1:]:
        raise DataError(f"{where} has shape {list(shape)}: expected images [N, H, W], "
                        "[N, C, H, W] or [N, H, W, C].")
    if layout == "auto":
        return "nhwc" if shape[3] in _CHANNELS and shape[1] not in _CHANNELS else "nchw"
    return layout


def image_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images of an array of ``shape`` in the resolved ``layout``."""
    if layout == "nhw":
        return (1, shape[1], shape[2])
    _, a, b, c = shape
    return (a, b, c) if layout == "nchw" else (c, a, b)


class ArrayDataModule(VAEDataModule):
    """Images from one array file ``path``: a ``.npy``, or a ``.npz`` holding the images under
    ``key`` (default: ``x`` if it has one, else its only array) and, optionally, int labels
    ``[N]`` under ``labels_key`` (else every label is -1).

    The images: ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (``layout``: "auto",
    "nchw" or "nhwc"; ``image_shape`` states the "auto" rule), either uint8 (0..255, divided by
    ``scale``) or float in [0, 1] (served as they are, as float32; any value outside [0, 1] or
    not finite is refused). Nothing is ever unpickled (``allow_pickle=False``): an array of
    Python objects is refused, and so is any other dtype. The header is read in ``__init__``
    (``shape``), the data in ``setup``; a ``.npy`` is memory-mapped, so only the requested
    splits are copied into memory.

    Splits: ``test_size`` images, then ``val_size`` of the rest, held out by the fixed
    permutation of the built-in sets (the same for every ``seed``), each a number of images or
    a fraction of them (default 10% each), each in file order. ``binarize``: "none" (default),
    "static" or "dynamic" (a Bernoulli draw of each pixel's value in [0, 1]).
    """

    name = "array"

    @checked
    def __init__(
        self,
        *args,
        path: str | os.PathLike,
        key: str | None = None,
        labels_key: str | None = None,
        layout: Literal["auto", "nchw", "nhwc"] = "auto",
        val_size: ValSize = 0.1,
        test_size: SplitSize = 0.1,
        binarize: Literal["none", "static", "dynamic"] = "none",
        **kwargs,
    ) -> None:
        super().__init__(*args, binarize=binarize, **kwargs)
        self.path, self.layout = Path(path), layout
        self.val_size, self.test_size = val_size, test_size
        self.key, self.labels_key = key, labels_key
        header = self._header()
        self.resolved_layout = resolve_layout(header.shape, layout, self._where(self.key))
        self.shape = image_shape(header.shape, self.resolved_layout)
        self.n, self.dtype = header.shape[0], header.dtype
        if self.n == 0:
            raise DataError(f"{self._where(self.key)} holds no images (shape "
                            f"{list(header.shape)}).")

    def _where(self, key: str | None) -> str:
        return f"path={str(self.path)!r}" + (f" (key={key!r})" if key is not None else "")

    def _kind(self) -> str:
        """``"npy"`` or ``"npz"``, by the file's first bytes (not its name)."""
        try:
            with open(self.path, "rb") as fh:
                magic = fh.read(6)
        except FileNotFoundError:
            raise DataNotFoundError(f"path={str(self.path)!r} does not exist: expected a .npy "
                                    "or .npz file of images.") from None
        except OSError as err:
            raise DataError(f"path={str(self.path)!r} cannot be read ({err.strerror}).") from None
        if magic == _NPY_MAGIC:
            return "npy"
        if magic.startswith(_ZIP_MAGIC):
            return "npz"
        raise DataError(f"path={str(self.path)!r} is neither a .npy nor a .npz file (it starts "
                        f"with {magic!r}): save the images with numpy.save or numpy.savez.")

    def _header(self) -> Header:
        """Check the file and the keys against its headers (no data is read); return the
        images' header."""
        if self._kind() == "npy":
            for name, value in (("key", self.key), ("labels_key", self.labels_key)):
                if value is not None:
                    raise DataError(f"{name}={value!r} names an array in a .npz file, but "
                                    f"path={str(self.path)!r} is a .npy holding one array: "
                                    f"expected {name}=null (labels need a .npz).")
            with open(self.path, "rb") as fh:
                header = read_header(fh, self._where(None))
        else:
            try:
                header = self._npz_header()
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
                raise DataError(f"path={str(self.path)!r} is not a readable .npz file "
                                f"({type(err).__name__}: {err}).") from None
        _check_dtype(header, self._where(self.key), labels=False)
        return header

    def _npz_header(self) -> Header:
        with zipfile.ZipFile(self.path) as archive:
            arrays = [n.removesuffix(".npy") for n in archive.namelist()
                      if n.endswith(".npy")]
            self.key = self._choose_key(arrays)
            with archive.open(self.key + ".npy") as fh:
                header = read_header(fh, self._where(self.key))
            if self.labels_key is not None:
                with archive.open(self.labels_key + ".npy") as fh:
                    labels = read_header(fh, self._where(self.labels_key))
                _check_dtype(labels, self._where(self.labels_key), labels=True)
                if labels.shape != header.shape[:1]:
                    raise DataError(f"{self._where(self.labels_key)} has shape "
                                    f"{list(labels.shape)}: expected one label per image, "
                                    f"{list(header.shape[:1])}.")
        return header

    def _choose_key(self, arrays: list[str]) -> str:
        """The images' array: ``key``, else ``x``, else the only array besides the labels."""
        for name, value in (("key", self.key), ("labels_key", self.labels_key)):
            if value is not None and value not in arrays:
                raise DataError(f"{name}={value!r} is not an array of path={str(self.path)!r}: "
                                f"expected one of {', '.join(arrays) or '(none: it is empty)'}.")
        others = [a for a in arrays if a != self.labels_key]
        if self.key is not None:
            chosen = self.key
        elif "x" in others or len(others) == 1:
            chosen = "x" if "x" in others else others[0]
        elif arrays and not others:
            raise DataError(f"labels_key={self.labels_key!r} is the only array of "
                            f"path={str(self.path)!r}: expected the images in another array.")
        else:
            raise DataError(f"key=null, but path={str(self.path)!r} holds "
                            f"{len(others) or 'no'} arrays ({', '.join(others) or 'none'}) and "
                            "none named x: expected key=<the name of the images' array>.")
        if chosen == self.labels_key:
            raise DataError(f"labels_key={self.labels_key!r} is also the images' key: expected "
                            "the name of another array of the file (integer labels [N]).")
        return chosen

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        """The images (a memory map for a ``.npy``) and the int64 labels."""
        try:
            if self._kind() == "npy":
                images = np.load(self.path, mmap_mode="r", allow_pickle=False)
                labels = np.full(len(images), -1, np.int64)
            else:
                with np.load(self.path, allow_pickle=False) as archive:
                    images = archive[self.key]
                    labels = (archive[self.labels_key].astype(np.int64)
                              if self.labels_key is not None
                              else np.full(len(images), -1, np.int64))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{self._where(self.key)} cannot be read ({type(err).__name__}: "
                            f"{err}): the file is truncated or corrupt.") from None
        if images.shape[0] != self.n or images.dtype != self.dtype:
            raise DataError(f"{self._where(self.key)} changed since this run started: it "
                            f"holds {images.dtype} {list(images.shape)}.")
        return images, labels

    def _load(self, names):
        images, labels = self._read()
        idx = held_out(self.n, self.val_size, self.test_size, self._where(self.key))
        if images.dtype.kind == "f":
            _check_values(images, self._where(self.key))
        out = {}
        for split in names:
            x = np.asarray(images[idx[split]])
            if self.resolved_layout == "nhwc":
                x = x.transpose(0, 3, 1, 2)
            if x.dtype.kind == "f":
                x = x.astype(np.float32, copy=False)
            out[split] = (np.ascontiguousarray(x), labels[idx[split]])
        return out


def _check_dtype(header: Header, where: str, labels: bool) -> None:
    if header.dtype.hasobject:
        raise DataError(f"{where} is an array of Python objects, which is never loaded "
                        "(unpickling runs code from the file): expected a numeric array saved "
                        "with numpy.save or numpy.savez.")
    if labels and header.dtype.kind not in "iu":
        raise DataError(f"{where} has dtype {header.dtype}: expected integer labels.")
    if not labels and header.dtype != np.uint8 and header.dtype.kind != "f":
        raise DataError(f"{where} has dtype {header.dtype}: expected uint8 (0..255) or float "
                        "(in [0, 1]) images; convert it, e.g. x.astype(numpy.float32) / 255.")


def _check_values(x: np.ndarray, where: str, chunk: int = 1024) -> None:
    """Float images must lie in [0, 1]: a ``DataError`` naming the first image that does not
    (checked ``chunk`` images at a time, so a large memory-mapped file is not copied whole)."""
    first, count = None, 0
    for start in range(0, len(x), chunk):
        part = np.asarray(x[start:start + chunk])
        ok = (np.isfinite(part) & (part >= 0) & (part <= 1)).reshape(len(part), -1)
        bad = np.flatnonzero(~ok.all(axis=1))
        if len(bad) and first is None:
            first = start + int(bad[0])
            value = float(part[bad[0]].reshape(-1)[~ok[bad[0]]][0])
        count += len(bad)
    if first is not None:
        raise DataError(f"{where}: image {first} (of {count} such) holds {value}: expected "
                        "float pixels in [0, 1] (and finite); rescale the images, or save them "
                        "as uint8.")
