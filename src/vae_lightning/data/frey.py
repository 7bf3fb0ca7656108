"""Frey Face: read ``frey_rawface.mat`` and the copy bundled with the package, and its data
module (``FreyFaceDataModule``)."""

from __future__ import annotations

import hashlib
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from vae_lightning.args import NonNegativeInt, PositiveInt, checked, fail
from vae_lightning.errors import DataError

from .datamodules import VAEDataModule
from .download import DataNotFoundError, describe, names, open_data
from .images import EXTENSIONS
from .splits import held_out

FREY_SHAPE = (560, 1965)  # pixels x faces, as stored in the .mat file (variable ``ff``)
FREY_IMAGE_SHAPE = (28, 20)
# sha256 of ff.tobytes() with ff uint8, shape FREY_SHAPE, C order (shared/data/README.md).
FREY_SHA256 = "fbd70c2c992104024a20f4d253da1a1132eb6bf8ed142dccbe7d2b1743b705c4"
ASSET = "frey_rawface.npz"

log = logging.getLogger(__name__)

# data.path without data=: the default data set reads it, and a newcomer's own data were refused
# as "not a .mat file" with no word of the data sets that read them.
OWN_DATA = (" data=frey (the default data set) reads Frey Face's .mat file; for data of your "
            "own: data=folder data.path=<a folder of images>, or data=array "
            "data.path=<a .npy or .npz file>.")


def frey_sha256(ff: np.ndarray) -> str:
    """Return the sha256 of ``ff`` (shape FREY_SHAPE) as the README defines it."""
    return hashlib.sha256(np.ascontiguousarray(ff).tobytes()).hexdigest()


def _check_shape(shape: tuple[int, ...], dtype: str, source: object) -> None:
    if tuple(shape) != FREY_SHAPE or dtype != "uint8":
        raise DataError(f"{source} holds ff {dtype} {tuple(shape)}, expected uint8 {FREY_SHAPE}.")


def read_frey_mat(path: str | os.PathLike) -> np.ndarray:
    """Return ``ff`` (uint8, shape (560, 1965)) from a ``frey_rawface.mat`` file: its variables'
    headers are listed first (``whosmat``), and ``ff`` alone is read once its header says it is
    the faces, so nothing else in the file is loaded."""
    from scipy.io import loadmat, whosmat

    with open_data(path, "frey_rawface.mat (a MATLAB .mat file with the variable 'ff')") as fh:
        try:
            found = {name: (shape, kind) for name, shape, kind in whosmat(fh)}
            if "ff" in found:
                _check_shape(*found["ff"], path)
                fh.seek(0)
                ff = np.asarray(loadmat(fh, variable_names=["ff"])["ff"])
        except DataError:
            raise
        except Exception as err:  # scipy's many ways of saying "not a .mat file it can read"
            raise DataError(f"{path} cannot be read as a MATLAB .mat file "
                            f"({_mat_problem(err)}); expected frey_rawface.mat with the "
                            "variable 'ff'.") from None
    if "ff" not in found:
        raise DataError(f"{path} holds no variable 'ff' (it holds {names(found)}); expected "
                        "frey_rawface.mat, whose variable 'ff' is the faces.")
    _check_shape(ff.shape, str(ff.dtype), path)
    return ff


def _mat_problem(err: Exception) -> str:
    """What scipy's error means, without its message (which may quote the file)."""
    if isinstance(err, NotImplementedError):  # scipy reads MATLAB's formats up to v7
        return "a MATLAB v7.3 (HDF5) file, which scipy does not read: save ff with -v7"
    return describe(err)


def load_bundled_frey() -> np.ndarray:
    """Return ``ff`` from the package's compressed copy, verified against FREY_SHA256."""
    with resources.files(__package__).joinpath("assets").joinpath(ASSET).open("rb") as fh:
        ff = np.load(fh, allow_pickle=False)["ff"]
    _check_shape(ff.shape, str(ff.dtype), ASSET)
    if frey_sha256(ff) != FREY_SHA256:
        raise DataError(f"The bundled {ASSET} is corrupt: its sha256 is not {FREY_SHA256}.")
    return ff


def frey_images(ff: np.ndarray) -> np.ndarray:
    """Turn ``ff`` columns into an array of faces, shape (1965, 28, 20)."""
    return np.ascontiguousarray(ff.T).reshape(-1, *FREY_IMAGE_SHAPE)


class FreyFaceDataModule(VAEDataModule):
    """Frey Face: 1965 grayscale 28x20 faces, continuous (no binarization: ``binarize`` accepts
    only "none"), no labels (y = -1).

    Split 1565/200/200 train/val/test by default (``val_size``, ``test_size``), drawn from a
    fixed permutation (SPLIT_SEED), each split kept in video order. Data source, first found:
    ``path`` (a ``frey_rawface.mat``), ``root/frey/frey_rawface.mat``, else the copy bundled
    with the package (checked against its sha256). Nothing is downloaded.
    """

    name = "frey"
    shape = (1, 28, 20)
    n_faces = 1965

    @checked
    def __init__(
        self,
        *args,
        val_size: NonNegativeInt = 200,
        test_size: PositiveInt = 200,
        path: str | os.PathLike | None = None,
        binarize: Literal["none"] = "none",
        **kwargs,
    ) -> None:
        super().__init__(*args, val_size=val_size, binarize=binarize, **kwargs)
        if val_size + test_size >= self.n_faces:
            fail(self, "test_size", test_size, f"val_size + test_size must be below the "
                 f"{self.n_faces} faces (val_size={val_size})")
        self.test_size = test_size
        self.path = None if path is None else Path(path)

    def _source(self) -> Path | None:
        """The .mat file to read (None: the bundled copy); says which one is used."""
        if self.path is not None:
            if self.path.is_dir():
                raise DataError(f"data.path={str(self.path)!r} is a directory; expected a "
                                "frey_rawface.mat file (or data.path=null for the bundled "
                                f"copy).{OWN_DATA}")
            if not self.path.is_file():
                raise DataNotFoundError(f"data.path={str(self.path)!r} does not exist; expected "
                                        "a frey_rawface.mat file (or data.path=null for the "
                                        f"bundled copy).{OWN_DATA}")
            if self.path.suffix.lower() in (*EXTENSIONS, ".npy", ".npz"):  # data of one's own
                raise DataError(f"data.path={str(self.path)!r} is not a .mat file; expected a "
                                "frey_rawface.mat file (or data.path=null for the bundled "
                                f"copy).{OWN_DATA}")
            log.info("Frey Face: reading %s (data.path).", self.path)
            return self.path
        own = self.root / "frey" / "frey_rawface.mat"
        if own.is_file():
            log.info("Frey Face: reading %s.", own)
            return own
        log.info("Frey Face: the copy bundled with the package (checked against its sha256); no "
                 "%s (data.root=%s).", own, self.root)
        return None

    def _load(self, names):
        source = self._source()
        images = frey_images(load_bundled_frey() if source is None else read_frey_mat(source))
        idx = held_out(self.n_faces, self.val_size, self.test_size, self.name)
        return {s: (images[idx[s]], np.full(len(idx[s]), -1, np.int64)) for s in names}
