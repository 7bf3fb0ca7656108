"""Read and write IDX files (the MNIST file format), plain or gzipped.

An IDX file is 00 00, a type code, the number of dimensions, each dimension as a big-endian
uint32, then the data. The header is untrusted: the bytes it declares are checked against the
file's size (plain) and against the memory available before they are read, and a gzipped file is
read no further than the header declares, so a small file cannot expand into memory unchecked.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from vae_lightning.errors import DataError

from .download import check_memory, describe, open_data

# IDX type code -> big-endian numpy dtype.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_WHAT = "an IDX file (MNIST's format), plain or gzipped"


class IDXError(DataError):
    """A file is not a well-formed IDX file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Return the array stored in the IDX file ``path``, plain or gzipped (told by its first
    bytes, whatever its name)."""
    path = Path(path)
    with open_data(path, _WHAT) as raw:
        try:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not gzipped:
                return _read(raw, path, os.fstat(raw.fileno()).st_size)
            with gzip.GzipFile(fileobj=raw) as fh:
                return _read(fh, path, None)
        except (OSError, EOFError, zlib.error) as err:  # a corrupt or truncated gzip stream
            raise IDXError(f"{path} cannot be read as {_WHAT} ({describe(err)}): it is "
                           "truncated or corrupt; replace it.") from None


def _read(fh: IO[bytes], path: Path, size: int | None) -> np.ndarray:
    """The array of the IDX stream ``fh`` of ``size`` bytes (None: unknown, gzipped)."""
    head = fh.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _DTYPES:
        raise IDXError(f"{path} does not start with an IDX header (00 00, a type code in "
                       "{08,09,0b,0c,0d,0e}, the number of dimensions): expected " + _WHAT + ".")
    dtype, ndim = _DTYPES[head[2]], head[3]
    dims = fh.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise IDXError(f"{path} is truncated: its header needs {4 + 4 * ndim} bytes, it has "
                       f"{4 + len(dims)}.")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    nbytes = math.prod(shape) * dtype.itemsize
    declared = f"{path} declares {dtype.newbyteorder('=')} {list(shape)}"
    if size is not None and size - 4 - 4 * ndim != nbytes:
        raise IDXError(f"{path} holds {size - 4 - 4 * ndim:,} data bytes but its header "
                       f"{list(shape)} needs {nbytes:,}: the file is truncated or corrupt.")
    check_memory(nbytes, declared, "the file is corrupt, or too large for this machine")
    data = fh.read(nbytes)
    if len(data) < nbytes:
        raise IDXError(f"{path} is truncated: it holds {len(data):,} data bytes where its header "
                       f"{list(shape)} needs {nbytes:,}.")
    if fh.read(1):
        raise IDXError(f"{path} holds more data than its header {list(shape)} declares "
                       f"({nbytes:,} bytes): the file is corrupt.")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as an IDX file, gzipped when the name ends in ``.gz``."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, "
            "int16, int32, float32, float64."
        )
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = np.ascontiguousarray(array, _DTYPES[code]).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + data)
