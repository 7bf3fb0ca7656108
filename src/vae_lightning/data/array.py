"""Your own images as one NumPy array file (``.npy`` or ``.npz``), read without unpickling.

A ``.npy`` file, and each array of a ``.npz`` (a zip of ``.npy`` files), starts with a short
header giving the array's dtype and shape: reading only that header tells the image shape the
model is built for, before any data is loaded. An array of Python objects is refused: loading it
would unpickle it, and unpickling runs whatever code the file names. The header is untrusted too:
the bytes it declares (its shape times its dtype's size) are checked against what the file (or
the zip member) can hold and against the memory available before anything is allocated
(``npy.py`` reads and checks headers, ``array_members.py`` each array of the file for what it
holds: images, labels or conditions; this module holds the data module and the image layouts).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from vae_lightning.args import checked
from vae_lightning.errors import DataError

from .array_members import (
    check_counts,
    check_dtype,
    check_pixels,
    check_stddevs,
    finite_conditions,
    member_header,
    read_member,
)
from .datamodules import VAEDataModule
from .download import describe, nameable, names, open_data
from .npy import Header, check_holds, map_npy, read_header
from .sampling import GaussianDraws
from .splits import SplitSize, ValSize, carve, digest, held_out, split_count

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
    ``[N, 3, 32, 3]`` (say ``layout=nhwc`` if it is not). A 2-d array ``[N, D]`` holds feature
    vectors (``"vectors"``)."""
    if len(shape) == 2 and shape[1]:
        return "vectors"
    if len(shape) == 3 and 0 not in shape[1:]:
        return "nhw"
    if len(shape) != 4 or 0 in shape[1:]:
        raise DataError(f"{where} has shape {list(shape)}: expected images [N, H, W], "
                        "[N, C, H, W] or [N, H, W, C], or feature vectors [N, D].")
    if layout == "auto":
        return "nhwc" if shape[3] in _CHANNELS and shape[1] not in _CHANNELS else "nchw"
    return layout


def image_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images of an array of ``shape`` in the resolved ``layout``; feature
    vectors ``[N, D]`` are one-row, one-channel images ``(1, 1, D)``, which every network and
    likelihood takes as they are."""
    if layout == "vectors":
        return (1, 1, shape[1])
    if layout == "nhw":
        return (1, shape[1], shape[2])
    _, a, b, c = shape
    return (a, b, c) if layout == "nchw" else (c, a, b)


class ArrayDataModule(VAEDataModule):
    """Images from one array file ``path``: a ``.npy``, or a ``.npz`` holding the images under
    ``key`` (default: ``x`` if it has one, else its only array) and, optionally, int labels
    ``[N]`` under ``labels_key`` (else every label is -1), or instead a condition vector per
    image under ``condition``: numbers ``[N, D]`` (or ``[N]``: D = 1), finite, served as
    float32 ``y`` ``[B, D]`` for a conditional model (``model=cvae model.classes=D``).

    The images: ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (``layout``: "auto",
    "nchw" or "nhwc"; ``image_shape`` states the "auto" rule), either uint8 (0..255, divided by
    ``scale``) or float in [0, 1] (served as they are, as float32; any value outside [0, 1] or
    not finite is refused). Or feature vectors ``[N, D]`` (e.g. another model's posterior
    means, ``vae-encode``), served as ``[B, 1, 1, D]``: float vectors may hold any finite real
    values (``real_values``: a likelihood for real numbers, ``model/likelihood=gaussian``, and
    no binarization), other integer ones are counts (``counts``: 0..2^24, served as float32
    numbers of counts, for ``model/likelihood=poisson`` or ``negative_binomial``), and uint8
    ones are read as pixels. Nothing is ever unpickled
    (``allow_pickle=False``): an array of Python objects is refused, and so is any other dtype.
    The header is read in ``__init__`` (``shape``), the data in ``setup``; a ``.npy`` is
    memory-mapped, so only the requested splits are copied into memory.

    Splits: ``test_size`` images, then ``val_size`` of the rest, held out by the fixed
    permutation of the built-in sets (the same for every ``seed``), each a number of images or
    a fraction of them (default 10% each), each in file order. A test split given apart, as
    data sets publish theirs: ``test_key`` names its array in the ``.npz`` (the same shape per
    image and dtype as the images), ``test_labels_key`` its labels (with ``labels_key``); the
    whole test array is the test split (``test_size`` must then be null) and ``val_size`` is
    held out of the images. ``binarize``: "none" (default),
    "static" or "dynamic" (a Bernoulli draw of each pixel's value in [0, 1]).

    ``std_key``: for float feature vectors, the array (same shape) of a standard deviation per
    value, s: each training minibatch then draws its points afresh, x ~ N(x, s^2)
    (``sampling.GaussianDraws``), the Gaussian analogue of dynamic binarization. With
    ``vae-encode``'s ``x_train`` and ``s_train`` this is M1's posterior q(z|x) = N(x, s^2), which
    Kingma et al.'s M1+M2 code draws from at every minibatch; validation and test read the means.
    """

    name = "array"

    @checked
    def __init__(
        self,
        *args,
        path: str | os.PathLike,
        key: str | None = None,
        labels_key: str | None = None,
        condition: str | None = None,
        layout: Literal["auto", "nchw", "nhwc"] = "auto",
        val_size: ValSize = 0.1,
        test_size: SplitSize | None = None,
        test_key: str | None = None,
        test_labels_key: str | None = None,
        binarize: Literal["none", "static", "dynamic"] = "none",
        std_key: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, binarize=binarize, **kwargs)
        self.path, self.layout = Path(path), layout
        self.val_size, self.test_key, self.test_labels_key = val_size, test_key, test_labels_key
        self.test_size = 0.1 if test_size is None and test_key is None else test_size
        self.key, self.labels_key, self.condition = key, labels_key, condition
        self.std_key = std_key
        self.train_std: torch.Tensor | None = None  # the training split's s (std_key)
        self._std_sha256: str | None = None
        self._given = {k for k in (key, labels_key, condition, test_key, test_labels_key,
                                   std_key) if k is not None}  # quotable
        if labels_key is not None and condition is not None:
            raise DataError(f"data.labels_key={labels_key!r} and data.condition={condition!r}: "
                            "the model is given one y beside each image, labels or a condition "
                            "vector; expected one of them, the other null.")
        self._check_test_keys()
        header = self._header()
        self.resolved_layout = resolve_layout(header.shape, layout, self._where(self.key))
        self.shape = image_shape(header.shape, self.resolved_layout)
        self.n, self.dtype = header.shape[0], header.dtype
        if self.n == 0:
            raise DataError(f"{self._where(self.key)} holds no images (shape "
                            f"{list(header.shape)}).")
        if (self.real_values or self.counts) and binarize != "none":
            held, fits = (("float feature vectors, real numbers", "real numbers, "
                           "model/likelihood=gaussian") if self.real_values else
                          ("integer feature vectors, counts", "counts, "
                           "model/likelihood=poisson or negative_binomial"))
            raise DataError(f"binarize={binarize!r}, but {self._where(self.key)} holds {held}, "
                            "not pixel values in [0, 1]: expected binarize=none (and a "
                            f"likelihood for {fits}).")
        if std_key is not None and not self.real_values:
            raise DataError(f"data.std_key={std_key!r}: standard deviations draw float feature "
                            f"vectors afresh, and {self._where(self.key)} holds "
                            f"{header.describe()}: expected float feature vectors [N, D] (e.g. "
                            "vae-encode's x_train), or std_key=null.")

    @property
    def images(self) -> bool:
        """Whether the points are images (feature vectors are not: no pictures of them)."""
        return self.resolved_layout != "vectors"

    @property
    def real_values(self) -> bool:
        """Whether the data are real numbers (float feature vectors), not values in [0, 1]."""
        return self.resolved_layout == "vectors" and self.dtype.kind == "f"

    @property
    def counts(self) -> bool:
        """Whether the data are counts (integer feature vectors other than uint8, which are
        pixels), served as float32 numbers of counts."""
        return (self.resolved_layout == "vectors" and self.dtype.kind in "iu"
                and self.dtype != np.uint8)

    def _check_test_keys(self) -> None:
        """A test split given apart (``test_key``) replaces the held-out one, and carries the
        same kind of ``y`` as the images."""
        if self.test_key is None:
            if self.test_labels_key is not None:
                raise DataError(f"data.test_labels_key={self.test_labels_key!r} without test_key: "
                                "expected data.test_key=<the test images' array> with it, or "
                                "data.test_labels_key=null.")
            return
        if self.test_size is not None:
            raise DataError(f"data.test_size={self.test_size!r} and data.test_key="
                            f"{self.test_key!r}: the test split is test_key's whole array; "
                            "expected data.test_size=null.")
        if self.condition is not None:
            raise DataError(f"data.test_key={self.test_key!r} with data.condition="
                            f"{self.condition!r}: a test split given apart takes labels "
                            "(data.test_labels_key), not condition vectors; expected "
                            "data.test_key=null (the test split held out by data.test_size) or "
                            "labels.")
        if (self.labels_key is None) != (self.test_labels_key is None):
            raise DataError(f"data.labels_key={self.labels_key!r} and data.test_labels_key="
                            f"{self.test_labels_key!r}: the test images need labels exactly "
                            "when the images have them; expected both set or both null.")

    def _where(self, key: str | None, name: str = "key") -> str:
        """``path='...' (key='...')`` for messages (``name``: the option that names the array);
        an array name taken from the file (the only one, ``key=null``) is quoted only when it is
        ``nameable``."""
        where = f"data.path={str(self.path)!r}"
        if key is None:
            return where
        if key in self._given or nameable(key):
            return f"{where} (data.{name}={key!r})"
        return f"{where} (its only array, whose name is not shown: not an identifier)"

    def _open(self) -> IO[bytes]:
        return open_data(self.path, "a .npy or .npz file of images", "data.path")

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
                    raise DataError(f"data.path={str(self.path)!r} is not a readable .npz file "
                                    f"({describe(err)}): save the images again with "
                                    "numpy.savez.") from None
            else:
                raise DataError(f"data.path={str(self.path)!r} is neither a .npy nor a .npz "
                                "file (it starts with neither numpy's .npy signature nor a zip "
                                "header): save the images with numpy.save or numpy.savez.")
        return header

    def _npy_header(self, fh: IO[bytes]) -> Header:
        for name, value in (("key", self.key), ("labels_key", self.labels_key),
                            ("condition", self.condition), ("test_key", self.test_key),
                            ("std_key", self.std_key)):
            if value is not None:
                raise DataError(f"data.{name}={value!r} names an array in a .npz file, but "
                                f"data.path={str(self.path)!r} is a .npy holding one array: "
                                f"expected {name}=null (labels and conditions need a .npz).")
        header = read_header(fh, self._where(None))
        check_dtype(header, self._where(None), "images")
        check_holds(header, os.fstat(fh.fileno()).st_size - header.offset, self._where(None))
        return header

    def _npz_header(self, fh: IO[bytes]) -> Header:
        with zipfile.ZipFile(fh) as archive:
            arrays = [n.removesuffix(".npy") for n in archive.namelist()
                      if n.endswith(".npy")]
            self.key = self._choose_key(arrays)
            header = member_header(archive, self.key, self._where(self.key), "images")
            if self.labels_key is not None:
                where = self._where(self.labels_key, "labels_key")
                labels = member_header(archive, self.labels_key, where, "labels")
                if labels.shape != header.shape[:1]:
                    raise DataError(f"{where} has shape {list(labels.shape)}: expected one "
                                    f"label per image, {list(header.shape[:1])}.")
            if self.condition is not None:
                where = self._where(self.condition, "condition")
                found = member_header(archive, self.condition, where, "condition").shape
                if not (found[:1] == header.shape[:1] and len(found) in (1, 2) and all(found)):
                    raise DataError(f"{where} has shape {list(found)}: expected one condition "
                                    f"vector per image, [{header.shape[0]}, D] (or "
                                    f"[{header.shape[0]}]: one number each).")
                self.condition_size = found[1] if len(found) == 2 else 1
            if self.test_key is not None:
                self._test_header(archive, header)
            if self.std_key is not None:
                where = self._where(self.std_key, "std_key")
                std = member_header(archive, self.std_key, where, "stddev")
                if std.shape != header.shape:
                    raise DataError(f"{where} has shape {list(std.shape)}: expected a standard "
                                    f"deviation per value of the feature vectors, "
                                    f"{list(header.shape)}.")
        return header

    def _test_header(self, archive: zipfile.ZipFile, images: Header) -> None:
        """The test array's header (and its labels'): images like the training ones."""
        where = self._where(self.test_key, "test_key")
        test = member_header(archive, self.test_key, where, "images")
        if test.shape[1:] != images.shape[1:] or test.dtype != images.dtype or not test.shape[0]:
            raise DataError(f"{where} holds {test.describe()}: expected test images like the "
                            f"images, {images.dtype} [N, {', '.join(map(str, images.shape[1:]))}]"
                            " with N > 0.")
        self.n_test = test.shape[0]
        if self.test_labels_key is not None:
            where = self._where(self.test_labels_key, "test_labels_key")
            labels = member_header(archive, self.test_labels_key, where, "labels")
            if labels.shape != test.shape[:1]:
                raise DataError(f"{where} has shape {list(labels.shape)}: expected one label "
                                f"per test image, {list(test.shape[:1])}.")

    def _choose_key(self, arrays: list[str]) -> str:
        """The images' array: ``key``, else ``x``, else the only array besides the labels (or the
        condition)."""
        for name, value in (("key", self.key), ("labels_key", self.labels_key),
                            ("condition", self.condition), ("test_key", self.test_key),
                            ("test_labels_key", self.test_labels_key),
                            ("std_key", self.std_key)):
            if value is not None and value not in arrays:
                raise DataError(f"data.{name}={value!r} is not an array of data.path="
                                f"{str(self.path)!r}: expected one of "
                                f"{names(arrays) if arrays else '(none: it is empty)'}.")
        beside = self.labels_key if self.labels_key is not None else self.condition
        name = "labels_key" if self.labels_key is not None else "condition"
        others = [a for a in arrays
                  if a not in (beside, self.test_key, self.test_labels_key, self.std_key)]
        if self.key is not None:
            chosen = self.key
        elif "x" in others or len(others) == 1:
            chosen = "x" if "x" in others else others[0]
        elif arrays and not others:
            raise DataError(f"data.{name}={beside!r} is the only array of "
                            f"data.path={str(self.path)!r}: expected the images in another array.")
        else:
            raise DataError(f"data.key=null, but data.path={str(self.path)!r} holds "
                            f"{len(others) or 'no'} arrays ({names(others)}) and "
                            "none named x: expected data.key=<the name of the images' array>.")
        if self.std_key is not None and self.std_key in (chosen, self.test_key):
            # The means as their own standard deviations: N(x, x^2), refused only where some
            # value happens to be negative.
            raise DataError(f"data.std_key={self.std_key!r} is also the "
                            f"{'images' if self.std_key == chosen else 'test images'}' key: "
                            "expected the array of the standard deviations of the feature "
                            "vectors (vae-encode's s_train beside x_train).")
        if beside is not None and chosen == beside:
            raise DataError(f"data.{name}={beside!r} is also the images' key: expected the name of "
                            "another array of the file ("
                            + ("integer labels [N])." if name == "labels_key" else
                               "numbers [N, D], a condition vector per image)."))
        return chosen

    def _read(self, with_test: bool, with_std: bool = False
              ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None,
                         np.ndarray | None]:
        """The images (a memory map for a ``.npy``) and the int64 labels (or the float32
        conditions ``[N, D]``), the test split given apart (``test_key``) when ``with_test``
        (else None: validation alone never decompresses it), and the float32 standard
        deviations (``std_key``) when ``with_std`` (else None), their headers checked again
        (the file may have changed since ``__init__``)."""
        where = self._where(self.key)
        with self._open() as fh:
            try:
                if self.format == "npy":
                    header = self._npy_header(fh)
                    self._check_unchanged(header)
                    return map_npy(fh, header), np.full(self.n, -1, np.int64), None, None
                with zipfile.ZipFile(fh) as archive:
                    images = read_member(archive, self.key, where, "images",
                                         self._check_unchanged)
                    labels = (np.full(self.n, -1, np.int64) if self.labels_key is None else
                              read_member(archive, self.labels_key,
                                          self._where(self.labels_key, "labels_key"), "labels"
                                          ).astype(np.int64))
                    if self.condition is not None:
                        labels = self._conditions(archive)
                    test = (self._read_test(archive)
                            if with_test and self.test_key is not None else None)
                    std = (self._read_std(archive)
                           if with_std and self.std_key is not None else None)
            except DataError:
                raise
            except _ZIP_ERRORS as err:
                raise DataError(f"{where} cannot be read ({describe(err)}): the file is "
                                "truncated or corrupt.") from None
        if len(labels) != self.n:
            raise DataError(f"{self._where(self.labels_key, 'labels_key')} changed since this run "
                            "started: "
                            f"it holds {len(labels)} labels for {self.n} images.")
        return images, labels, test, std

    def _read_std(self, archive: zipfile.ZipFile) -> np.ndarray:
        """The standard deviations of ``std_key``, float32, checked (finite, >= 0)."""
        where = self._where(self.std_key, "std_key")
        return check_stddevs(read_member(archive, self.std_key, where, "stddev",
                                         self._check_unchanged), where)

    def _read_test(self, archive: zipfile.ZipFile) -> tuple[np.ndarray, np.ndarray]:
        """The test split given apart: its images and int64 labels (-1 without labels)."""
        where = self._where(self.test_key, "test_key")

        def unchanged(header: Header) -> None:
            if header.shape[0] != self.n_test or header.dtype != self.dtype:
                raise DataError(f"{where} changed since this run started: it holds "
                                f"{header.describe()}.")

        images = read_member(archive, self.test_key, where, "images", unchanged)
        if self.test_labels_key is None:
            return images, np.full(self.n_test, -1, np.int64)
        labels = read_member(archive, self.test_labels_key,
                             self._where(self.test_labels_key, "test_labels_key"), "labels")
        if len(labels) != self.n_test:
            raise DataError(f"{self._where(self.test_labels_key, 'test_labels_key')} changed "
                            f"since this run started: it holds {len(labels)} labels for "
                            f"{self.n_test} test images.")
        return images, labels.astype(np.int64)

    def _conditions(self, archive: zipfile.ZipFile) -> np.ndarray:
        """The condition vectors, float32 ``[N, D]``, checked: the header as in ``__init__``,
        every value finite (as float32)."""
        where = self._where(self.condition, "condition")

        def unchanged(header: Header) -> None:
            if header.shape[:1] != (self.n,) or math.prod(header.shape[1:]) != self.condition_size:
                raise DataError(f"{where} changed since this run started: it holds "
                                f"{header.describe()} for {self.n} images.")

        return finite_conditions(read_member(archive, self.condition, where, "condition",
                                             unchanged), where)

    def _check_unchanged(self, header: Header) -> None:
        if header.shape[0] != self.n or header.dtype != self.dtype:
            raise DataError(f"{self._where(self.key)} changed since this run started: it "
                            f"holds {header.describe()}.")

    def _load(self, names):
        images, labels, test, std = self._read(with_test="test" in names,
                                               with_std="train" in names)
        where = self._where(self.key)
        if self.test_key is None:
            idx = held_out(self.n, self.val_size, self.test_size, where)
            source = dict.fromkeys(idx, (images, labels))
        else:  # the test split given apart: val held out of the images
            train, val = carve(self.n, split_count(self.val_size, self.n), where)
            idx = {"train": train, "val": val, "test": np.arange(self.n_test)}
            source = {"train": (images, labels), "val": (images, labels)}
            if test is not None:
                source["test"] = test
        if images.dtype.kind == "f":
            check_pixels(images, where, unit_interval=not self.real_values)
            if test is not None:
                check_pixels(test[0], self._where(self.test_key, "test_key"),
                             unit_interval=not self.real_values)
        if self.counts:
            check_counts(images, where)
            if test is not None:
                check_counts(test[0], self._where(self.test_key, "test_key"))
        out = {}
        self.rows.update({split: idx[split] for split in names})
        for split in names:
            x = np.asarray(source[split][0][idx[split]])
            if self.resolved_layout == "nhwc":
                x = x.transpose(0, 3, 1, 2)
            if x.dtype.kind == "f" or self.counts:
                x = x.astype(np.float32, copy=False)
            out[split] = (np.ascontiguousarray(x), source[split][1][idx[split]])
        if std is not None:
            train_std = np.ascontiguousarray(std[idx["train"]])
            self.train_std = torch.from_numpy(train_std)
            self._std_sha256 = digest(train_std, np.zeros(0, np.int64))
        return out

    def identity(self) -> dict[str, Any]:
        """``VAEDataModule.identity``, and with ``std_key`` the SHA-256 of the training split's
        standard deviations (compared on resume, where the training split is read)."""
        identity = super().identity()
        if self._std_sha256 is not None:
            identity["train_std"] = {"key": self.std_key, "sha256": self._std_sha256}
        return identity

    def training_points(self, x: torch.Tensor) -> Any:
        """The training split drawn afresh at every minibatch from N(x, s^2) (``std_key``)."""
        if self.train_std is None:
            return x
        return GaussianDraws(x, self.train_std.to(x.device), self.seed)
