"""Your own images as one NumPy array file (``.npy`` or ``.npz``), read without unpickling.

A ``.npy`` file, and each array of a ``.npz`` (a zip of ``.npy`` files), starts with a short
header giving the array's dtype and shape: reading only that header tells the image shape the
model is built for, before any data is loaded. An array of Python objects is refused: loading it
would unpickle it, and unpickling runs whatever code the file names. The header is untrusted too:
the bytes it declares (its shape times its dtype's size) are checked against what the file (or
the zip member) can hold and against the memory available before anything is allocated
(``npy.py`` reads and checks headers; this module holds the data module and the image checks).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO, Literal

import numpy as np

from vae_lightning.args import checked
from vae_lightning.errors import DataError

from .datamodules import VAEDataModule
from .download import describe, nameable, names, open_data
from .npy import Header, check_holds, dtype_name, map_npy, member_capacity, read_header
from .splits import SplitSize, ValSize, held_out

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"  # a zip: a member, or the end of an empty one
# What a zip reader raises for an archive or member it cannot read (corrupt, truncated, an
# undecodable member name, an unsupported compression method, encrypted).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error,
               ValueError, NotImplementedError, RuntimeError)
# Channel counts that mark an axis as the channels in ``layout="auto"``.
_CHANNELS = (1, 3)


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
        self._given = {k for k in (key, labels_key) if k is not None}  # the user's: quotable
        header = self._header()
        self.resolved_layout = resolve_layout(header.shape, layout, self._where(self.key))
        self.shape = image_shape(header.shape, self.resolved_layout)
        self.n, self.dtype = header.shape[0], header.dtype
        if self.n == 0:
            raise DataError(f"{self._where(self.key)} holds no images (shape "
                            f"{list(header.shape)}).")

    def _where(self, key: str | None) -> str:
        """``path='...' (key='...')`` for messages; an array name taken from the file (the only
        one, ``key=null``) is quoted only when it is ``nameable``."""
        where = f"path={str(self.path)!r}"
        if key is None:
            return where
        if key in self._given or nameable(key):
            return f"{where} (key={key!r})"
        return f"{where} (its only array, whose name is not shown: not an identifier)"

    def _open(self) -> IO[bytes]:
        return open_data(self.path, "a .npy or .npz file of images", "path")

    def _header(self) -> Header:
        """Check the file and the keys against its headers (no data is read); return the
        images' header."""
        with self._open() as fh:
            magic = fh.read(len(_NPY_MAGIC))
            fh.seek(0)
            if magic == _NPY_MAGIC:
                self.format = "npy"
                header = self._npy_header(fh)
            elif magic.startswith(_ZIP_MAGIC):
                self.format = "npz"
                try:
                    header = self._npz_header(fh)
                except DataError:
                    raise
                except _ZIP_ERRORS as err:
                    raise DataError(f"path={str(self.path)!r} is not a readable .npz file "
                                    f"({describe(err)}): save the images again with "
                                    "numpy.savez.") from None
            else:
                raise DataError(f"path={str(self.path)!r} is neither a .npy nor a .npz file (it "
                                "starts with neither numpy's .npy signature nor a zip header): "
                                "save the images with numpy.save or numpy.savez.")
        return header

    def _npy_header(self, fh: IO[bytes]) -> Header:
        for name, value in (("key", self.key), ("labels_key", self.labels_key)):
            if value is not None:
                raise DataError(f"{name}={value!r} names an array in a .npz file, but "
                                f"path={str(self.path)!r} is a .npy holding one array: "
                                f"expected {name}=null (labels need a .npz).")
        header = read_header(fh, self._where(None))
        _check_dtype(header, self._where(None), labels=False)
        check_holds(header, os.fstat(fh.fileno()).st_size - header.offset, self._where(None))
        return header

    def _npz_header(self, fh: IO[bytes]) -> Header:
        with zipfile.ZipFile(fh) as archive:
            arrays = [n.removesuffix(".npy") for n in archive.namelist()
                      if n.endswith(".npy")]
            self.key = self._choose_key(arrays)
            header = _member_header(archive, self.key, self._where(self.key), labels=False)
            if self.labels_key is not None:
                where = self._where(self.labels_key)
                labels = _member_header(archive, self.labels_key, where, labels=True)
                if labels.shape != header.shape[:1]:
                    raise DataError(f"{where} has shape {list(labels.shape)}: expected one "
                                    f"label per image, {list(header.shape[:1])}.")
        return header

    def _choose_key(self, arrays: list[str]) -> str:
        """The images' array: ``key``, else ``x``, else the only array besides the labels."""
        for name, value in (("key", self.key), ("labels_key", self.labels_key)):
            if value is not None and value not in arrays:
                raise DataError(f"{name}={value!r} is not an array of path={str(self.path)!r}: "
                                "expected one of "
                                f"{names(arrays) if arrays else '(none: it is empty)'}.")
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
                            f"{len(others) or 'no'} arrays ({names(others)}) and "
                            "none named x: expected key=<the name of the images' array>.")
        if chosen == self.labels_key:
            raise DataError(f"labels_key={self.labels_key!r} is also the images' key: expected "
                            "the name of another array of the file (integer labels [N]).")
        return chosen

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        """The images (a memory map for a ``.npy``) and the int64 labels, their headers checked
        again (the file may have changed since ``__init__``)."""
        where = self._where(self.key)
        with self._open() as fh:
            try:
                if self.format == "npy":
                    header = self._npy_header(fh)
                    self._check_unchanged(header)
                    return map_npy(fh, header), np.full(self.n, -1, np.int64)
                with zipfile.ZipFile(fh) as archive:
                    images = _read_member(archive, self.key, where, False,
                                          self._check_unchanged)
                    labels = (np.full(self.n, -1, np.int64) if self.labels_key is None else
                              _read_member(archive, self.labels_key,
                                           self._where(self.labels_key), True).astype(np.int64))
            except DataError:
                raise
            except _ZIP_ERRORS as err:
                raise DataError(f"{where} cannot be read ({describe(err)}): the file is "
                                "truncated or corrupt.") from None
        if len(labels) != self.n:
            raise DataError(f"{self._where(self.labels_key)} changed since this run started: "
                            f"it holds {len(labels)} labels for {self.n} images.")
        return images, labels

    def _check_unchanged(self, header: Header) -> None:
        if header.shape[0] != self.n or header.dtype != self.dtype:
            raise DataError(f"{self._where(self.key)} changed since this run started: it "
                            f"holds {header.describe()}.")

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


def _member_header(archive: zipfile.ZipFile, name: str, where: str, labels: bool,
                   member: IO[bytes] | None = None) -> Header:
    """The header of the array ``name`` of a ``.npz`` (read from ``member``, its open member,
    if given), its dtype checked (``labels``: integer labels, else images), then its size
    against what the member can hold (``check_holds``)."""
    if member is None:
        with archive.open(name + ".npy") as member:
            return _member_header(archive, name, where, labels, member)
    header = read_header(member, where)
    _check_dtype(header, where, labels)
    check_holds(header, member_capacity(archive.getinfo(name + ".npy"), header.offset), where)
    return header


def _read_member(archive: zipfile.ZipFile, name: str, where: str, labels: bool,
                 check=lambda header: None) -> np.ndarray:
    """The array ``name`` of a ``.npz``, its header checked (``_member_header``, then
    ``check``) before its data is read."""
    with archive.open(name + ".npy") as member:
        header = _member_header(archive, name, where, labels, member)
        check(header)
        data = member.read(header.nbytes)
    if len(data) != header.nbytes:
        raise DataError(f"{where} holds {len(data):,} bytes of data where its header declares "
                        f"{header.describe()} ({header.nbytes:,} bytes): the file is truncated "
                        "or corrupt.")
    return np.frombuffer(data, header.dtype).reshape(
        header.shape, order="F" if header.fortran_order else "C")


def _check_dtype(header: Header, where: str, labels: bool) -> None:
    if header.dtype.hasobject:
        raise DataError(f"{where} is an array of Python objects, which is never loaded "
                        "(unpickling runs code from the file): expected a numeric array saved "
                        "with numpy.save or numpy.savez.")
    if labels and header.dtype.kind not in "iu":
        raise DataError(f"{where} has dtype {dtype_name(header.dtype)}: expected integer "
                        "labels.")
    if not labels and header.dtype != np.uint8 and header.dtype.kind != "f":
        raise DataError(f"{where} has dtype {dtype_name(header.dtype)}: expected uint8 "
                        "(0..255) or float (in [0, 1]) images; convert it, e.g. "
                        "x.astype(numpy.float32) / 255.")


def _check_values(x: np.ndarray, where: str, chunk: int = 1024) -> None:
    """Float images must lie in [0, 1]: a ``DataError`` naming the first image that does not,
    and how (checked ``chunk`` images at a time, so a large memory-mapped file is not copied
    whole; no value of the file is quoted)."""
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
        how = ("a value that is not finite" if not math.isfinite(value) else
               "a value below 0" if value < 0 else "a value above 1")
        raise DataError(f"{where}: image {first} (of {count} such) holds {how}: expected "
                        "float pixels in [0, 1] (and finite); rescale the images, or save them "
                        "as uint8.")
