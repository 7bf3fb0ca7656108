"""The ``.npy`` header, read without unpickling: what an array file declares, checked; and
``.npy`` files written atomically, streamed by blocks (``atomic_npy``).

A ``.npy`` file (and each member of a ``.npz``) starts with a short header giving the array's
dtype, shape and memory order. Reading only the header tells what the array is before any data
is loaded; the header is untrusted, so the bytes it declares (shape times itemsize) are checked
against what the file (or zip member) can hold and against the memory available before anything
is allocated. Shared by ``data=array`` (``array.py``), the folder cache (``folder.py``) and
``vae-sample``'s array of samples.
"""

from __future__ import annotations

import contextlib
import math
import os
import tokenize
import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

import numpy as np

from vae_lightning.errors import DataError
from vae_lightning.files import atomic_write

from .download import check_memory, describe

# Deflate's largest expansion: one match codes at most 258 bytes in at least 2 bits, so a
# deflated member of c bytes holds at most 1032 c (what a header may claim beyond is a lie).
_DEFLATE_RATIO = 1032


class Header(NamedTuple):
    """What an array's header says: its shape and dtype, its memory order, and the offset of
    its data in the file (or member)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool = False
    offset: int = 0

    @property
    def nbytes(self) -> int:
        """The bytes of data the header declares."""
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        """``uint8 [N, H, W]``, the header's claim in words (a structured dtype's field names,
        bytes of the file, are not quoted)."""
        return f"{dtype_name(self.dtype)} {list(self.shape)}"


def dtype_name(dtype: np.dtype) -> str:
    return "a structured dtype" if dtype.names else str(dtype)


def read_header(fh: IO[bytes], where: str) -> Header:
    """The header of the ``.npy`` data in ``fh``, read without loading (or unpickling) the
    array; a ``DataError`` naming ``where`` when it is not a ``.npy`` header."""
    read = None
    try:
        version = np.lib.format.read_magic(fh)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is not None:
            shape, fortran_order, dtype = read(fh)
    except (ValueError, SyntaxError, EOFError, tokenize.TokenError, RecursionError) as err:
        raise DataError(f"{where} is not a readable .npy array ({describe(err)} in its header): "
                        "save it with numpy.save or numpy.savez.") from None
    if read is None:
        raise DataError(f"{where} is a .npy array of a format version other than 1.0 and 2.0: "
                        "save it with numpy.save or numpy.savez.")
    header = Header(tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran_order),
                    fh.tell())
    if any(d < 0 for d in header.shape):
        raise DataError(f"{where} declares the shape {list(header.shape)}, with a negative "
                        "dimension: the file is corrupt; save it again with numpy.save or "
                        "numpy.savez.")
    return header


def check_holds(header: Header, capacity: int, where: str) -> None:
    """Refuse a header that declares more bytes than its file (or member) can hold,
    ``capacity`` bytes after the header, or than the memory available: the array is checked
    before anything is allocated for it."""
    if header.nbytes > capacity:
        raise DataError(f"{where} declares {header.describe()} ({header.nbytes:,} bytes of data), "
                        f"but holds at most {max(0, capacity):,}: the file is truncated or "
                        "corrupt; save it again with numpy.save or numpy.savez.")
    check_memory(header.nbytes, f"{where} declares {header.describe()}",
                 "use fewer or smaller images (or a machine with more memory)")


def member_capacity(info: zipfile.ZipInfo, offset: int) -> int:
    """The most data bytes a zip member can hold after its ``offset`` bytes of header: its
    uncompressed size, and no more than its compressed size can expand to."""
    size = info.file_size
    if info.compress_type == zipfile.ZIP_STORED:
        size = min(size, info.compress_size)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        size = min(size, info.compress_size * _DEFLATE_RATIO)
    return size - offset


def map_npy(fh: IO[bytes], header: Header) -> np.ndarray:
    """The data of the open ``.npy`` file ``fh`` (its ``header`` checked: ``check_holds``)
    memory-mapped read-only: only what is indexed is read."""
    return np.memmap(fh, header.dtype, mode="r", offset=header.offset, shape=header.shape,
                     order="F" if header.fortran_order else "C")


@contextlib.contextmanager
def atomic_npy(path: str | os.PathLike, shape: tuple[int, ...],
               dtype: Any = np.float32) -> Iterator[Callable[[Any], None]]:
    """Write a ``.npy`` array of ``shape`` to ``path`` atomically (``atomic_write``), its rows
    streamed: yields ``append(block)``, called with consecutive C-ordered blocks whose rows add
    up to ``shape[0]``, so an array larger than memory is never held whole. numpy writes the
    header; the data goes through the file's own ``write``, which reports a full disk or a
    file-size limit with its errno (numpy's ``tofile`` says only how many bytes it wrote). A
    short or long total is an error, and the target is then left untouched."""
    dtype = np.dtype(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    written = 0
    with atomic_write(path) as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": tuple(shape)})

        def append(block: Any) -> None:
            nonlocal written
            data = np.ascontiguousarray(block, dtype=dtype)
            fh.write(memoryview(data).cast("B"))
            written += data.nbytes

        yield append
        if written != expected:
            raise ValueError(f"{path}: {written} bytes of data written for an array of shape "
                             f"{tuple(shape)} ({expected} bytes)")
