"""The arrays of an array file (``data=array``), each of one kind: the images, their integer
labels, or a condition vector per image. A ``.npz`` member's header is read from the zip and
checked for its kind (its dtype, then its size against what the member can hold) before any of
its data is read; the values a header cannot tell are checked once read (float pixels in
[0, 1], counts in float32's exact range, finite conditions). ``array.py`` holds the data
module that reads them.
"""

from __future__ import annotations

import math
import zipfile
from typing import IO, Literal

import numpy as np

from vae_lightning.errors import DataError

from .npy import Header, check_holds, dtype_name, member_capacity, read_header

Kind = Literal["images", "labels", "condition", "stddev"]  # what an array of the file holds


def member_header(archive: zipfile.ZipFile, name: str, where: str, kind: Kind,
                   member: IO[bytes] | None = None) -> Header:
    """The header of the array ``name`` of a ``.npz`` (read from ``member``, its open member,
    if given), its dtype checked (``kind``: images, integer labels or a numeric condition),
    then its size against what the member can hold (``check_holds``)."""
    if member is None:
        with archive.open(name + ".npy") as member:
            return member_header(archive, name, where, kind, member)
    header = read_header(member, where)
    check_dtype(header, where, kind)
    check_holds(header, member_capacity(archive.getinfo(name + ".npy"), header.offset), where)
    return header


def read_member(archive: zipfile.ZipFile, name: str, where: str, kind: Kind,
                 check=lambda header: None) -> np.ndarray:
    """The array ``name`` of a ``.npz``, its header checked (``_member_header``, then
    ``check``) before its data is read."""
    with archive.open(name + ".npy") as member:
        header = member_header(archive, name, where, kind, member)
        check(header)
        data = member.read(header.nbytes)
    if len(data) != header.nbytes:
        raise DataError(f"{where} holds {len(data):,} bytes of data where its header declares "
                        f"{header.describe()} ({header.nbytes:,} bytes): the file is truncated "
                        "or corrupt.")
    array = np.frombuffer(data, header.dtype).reshape(
        header.shape, order="F" if header.fortran_order else "C")
    if kind == "labels" and array.dtype.kind == "u" and array.size \
            and int(array.max()) > np.iinfo(np.int64).max:
        # Labels are int64: 2**64 - 1 became -1 (no label), others large negative classes.
        raise DataError(f"{where} holds the label {int(array.max())}, beyond the int64 range "
                        "labels are read in: expected class labels 0..K-1 (or -1: none).")
    return array


def check_dtype(header: Header, where: str, kind: Kind) -> None:
    if header.dtype.hasobject:
        raise DataError(f"{where} is an array of Python objects, which is never loaded "
                        "(unpickling runs code from the file): expected a numeric array saved "
                        "with numpy.save or numpy.savez.")
    if kind == "labels" and header.dtype.kind not in "iu":
        raise DataError(f"{where} has dtype {dtype_name(header.dtype)}: expected integer "
                        "labels.")
    if kind == "condition" and header.dtype.kind not in "iuf":
        raise DataError(f"{where} has dtype {dtype_name(header.dtype)}: expected numbers "
                        "(integers or floats), a condition vector per image.")
    if kind == "stddev" and header.dtype.kind != "f":
        raise DataError(f"{where} has dtype {dtype_name(header.dtype)}: expected float "
                        "standard deviations, one per value of the feature vectors.")
    if kind == "images" and header.dtype != np.uint8 and header.dtype.kind != "f":
        if len(header.shape) == 2 and header.dtype.kind in "iu":  # counts [N, D]
            return
        if len(header.shape) == 2:
            raise DataError(f"{where} has dtype {dtype_name(header.dtype)}: expected float "
                            "feature vectors [N, D] (any finite values, for "
                            "model/likelihood=gaussian), integer ones (counts, for "
                            "model/likelihood=poisson or negative_binomial) or uint8 values "
                            "0..255 (pixels).")
        raise DataError(f"{where} has dtype {dtype_name(header.dtype)}: expected uint8 "
                        "(0..255) or float (in [0, 1]) images; convert it, e.g. "
                        "x.astype(numpy.float32) / 255.")


def check_pixels(x: np.ndarray, where: str, chunk: int = 1024,
                 unit_interval: bool = True) -> None:
    """Float images must lie in [0, 1] (float feature vectors, ``unit_interval=False``: be
    finite as the float32 they are served as: float64's 1e300 is inf there): a ``DataError``
    naming the first image that does not, and how (checked ``chunk`` images at a time, so a
    large memory-mapped file is not copied whole; no value of the file is quoted)."""
    first, count = None, 0
    for start in range(0, len(x), chunk):
        part = np.asarray(x[start:start + chunk])
        with np.errstate(over="ignore"):  # a value beyond float32's range: refused below
            ok = np.isfinite(part.astype(np.float32, copy=False))
        if unit_interval:
            ok &= (part >= 0) & (part <= 1)
        ok = ok.reshape(len(part), -1)
        bad = np.flatnonzero(~ok.all(axis=1))
        if len(bad) and first is None:
            first = start + int(bad[0])
            value = float(part[bad[0]].reshape(-1)[~ok[bad[0]]][0])
        count += len(bad)
    if first is not None:
        how = ("a value that is not finite" if not math.isfinite(value) else
               "a value beyond float32's range (|x| > 3.4e38), infinite as the float32 it is "
               "served as" if abs(value) > float(np.finfo(np.float32).max) else
               "a value below 0" if value < 0 else "a value above 1")
        if not unit_interval:
            raise DataError(f"{where}: vector {first} (of {count} such) holds {how}: expected "
                            "finite feature vectors.")
        raise DataError(f"{where}: image {first} (of {count} such) holds {how}: expected "
                        "float pixels in [0, 1] (and finite); rescale the images, or save them "
                        "as uint8.")


# Counts are served as float32, which holds every integer up to 2^24 exactly.
MAX_COUNT = 2 ** 24


def check_counts(x: np.ndarray, where: str, chunk: int = 1024) -> None:
    """Integer feature vectors are counts: a ``DataError`` naming the first vector holding a
    negative value or one beyond ``MAX_COUNT`` (checked ``chunk`` vectors at a time, so a large
    memory-mapped file is not copied whole)."""
    first, count, low = None, 0, False
    for start in range(0, len(x), chunk):
        part = np.asarray(x[start:start + chunk])
        bad = np.flatnonzero(((part < 0) | (part > MAX_COUNT)).any(axis=1))
        if len(bad) and first is None:
            first, low = start + int(bad[0]), bool((part[bad[0]] < 0).any())
        count += len(bad)
    if first is not None:
        how = "a negative value" if low else f"a value above 2^24 = {MAX_COUNT:,}"
        raise DataError(f"{where}: vector {first} (of {count} such) holds {how}: integer "
                        "feature vectors are counts, served as float32, which is exact for "
                        f"0..{MAX_COUNT:,}; expected counts in that range.")


def check_stddevs(found: np.ndarray, where: str) -> np.ndarray:
    """The standard deviations ``found`` as float32; a ``DataError`` naming the first vector
    whose standard deviations are not all finite and non-negative (as float32)."""
    with np.errstate(over="ignore"):  # a value beyond float32's range: refused below
        stddevs = found.astype(np.float32)
    rows = stddevs.reshape(len(stddevs), -1)
    bad = np.flatnonzero(~(np.isfinite(rows) & (rows >= 0)).all(axis=1))
    if len(bad):
        raise DataError(f"{where}: the standard deviations of vector {bad[0]} (of {len(bad)} "
                        "such) hold a value that is negative or not finite: expected finite "
                        "numbers >= 0.")
    return stddevs


def finite_conditions(found: np.ndarray, where: str) -> np.ndarray:
    """The condition vectors ``found`` ``[N]`` or ``[N, D]`` as float32 ``[N, D]``; a
    ``DataError`` naming the first image whose condition is not finite as float32."""
    with np.errstate(over="ignore"):  # a value beyond float32's range: refused below
        conditions = found.reshape(len(found), -1).astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(conditions).all(axis=1))
    if len(bad):
        raise DataError(f"{where}: the condition of image {bad[0]} (of {len(bad)} such) holds "
                        "a value that is not finite (or beyond float32's range): expected "
                        "finite numbers.")
    return conditions
