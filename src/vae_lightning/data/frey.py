"""Frey Face: read ``frey_rawface.mat`` and the copy bundled with the package."""

from __future__ import annotations

import hashlib
import os
from importlib import resources

import numpy as np

from .errors import DataError

FREY_SHAPE = (560, 1965)  # pixels x faces, as stored in the .mat file (variable ``ff``)
FREY_IMAGE_SHAPE = (28, 20)
# sha256 of ff.tobytes() with ff uint8, shape FREY_SHAPE, C order (shared/data/README.md).
FREY_SHA256 = "fbd70c2c992104024a20f4d253da1a1132eb6bf8ed142dccbe7d2b1743b705c4"
ASSET = "frey_rawface.npz"


def frey_sha256(ff: np.ndarray) -> str:
    """Return the sha256 of ``ff`` (shape FREY_SHAPE) as the README defines it."""
    return hashlib.sha256(np.ascontiguousarray(ff).tobytes()).hexdigest()


def _check_shape(ff: np.ndarray, source: object) -> np.ndarray:
    if ff.shape != FREY_SHAPE or ff.dtype != np.uint8:
        raise DataError(f"{source} holds ff {ff.dtype} {ff.shape}, expected uint8 {FREY_SHAPE}.")
    return ff


def read_frey_mat(path: str | os.PathLike) -> np.ndarray:
    """Return ``ff`` (uint8, shape (560, 1965)) from a ``frey_rawface.mat`` file."""
    from scipy.io import loadmat

    try:
        variables = loadmat(path)
    except Exception as err:  # scipy's many ways of saying "not a .mat file it can read"
        raise DataError(f"{path} cannot be read as a MATLAB .mat file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'unreadable'}); expected "
                        "frey_rawface.mat with the variable 'ff'.") from None
    if "ff" not in variables:
        found = ", ".join(repr(k) for k in variables if not k.startswith("__")) or "none"
        raise DataError(f"{path} holds no variable 'ff' (it holds {found}); expected "
                        "frey_rawface.mat, whose variable 'ff' is the faces.")
    return _check_shape(np.asarray(variables["ff"]), path)


def load_bundled_frey() -> np.ndarray:
    """Return ``ff`` from the package's compressed copy, verified against FREY_SHA256."""
    with resources.files(__package__).joinpath("assets").joinpath(ASSET).open("rb") as fh:
        ff = _check_shape(np.load(fh, allow_pickle=False)["ff"], ASSET)
    if frey_sha256(ff) != FREY_SHA256:
        raise DataError(f"The bundled {ASSET} is corrupt: its sha256 is not {FREY_SHA256}.")
    return ff


def frey_images(ff: np.ndarray) -> np.ndarray:
    """Turn ``ff`` columns into an array of faces, shape (1965, 28, 20)."""
    return np.ascontiguousarray(ff.T).reshape(-1, *FREY_IMAGE_SHAPE)
