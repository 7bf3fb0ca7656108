"""MNIST and Fashion-MNIST: data sets of four IDX files (``idx``), found on disk or downloaded
(``download``); the validation split carved from the official training set (``splits``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from vae_lightning.errors import DataError

from .datamodules import VAEDataModule
from .download import ensure_files
from .idx import read_idx
from .splits import carve

log = logging.getLogger(__name__)


class IDXDataModule(VAEDataModule):
    """MNIST-format data: four IDX files found on disk or downloaded. A new data set of this
    format is a subclass naming its ``name``, ``files`` (name -> md5 of the canonical .gz),
    ``mirrors`` and optional ``system_dirs``, in a module of its own, with its YAML
    (``conf/data/<name>.yaml``, from ``_idx``)."""

    shape = (1, 28, 28)
    mirrors: tuple[str, ...]
    files: dict[str, str]  # name -> md5 of the canonical .gz
    system_dirs: tuple[str, ...] = ()

    def __init__(self, *args,
                 binarize: Literal["none", "static", "dynamic"] = "dynamic", **kwargs) -> None:
        """Default ``binarize="dynamic"``: binary pixels, as the Bernoulli likelihood needs."""
        super().__init__(*args, binarize=binarize, **kwargs)

    def _dirs(self) -> list[Path]:
        return [self.root / self.name, *map(Path, self.system_dirs)]

    def prepare_data(self) -> None:
        ensure_files(self.files, self._dirs(), self.mirrors, self.download)

    def _read(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        wanted = {k: v for k, v in self.files.items() if k.startswith(prefix)}
        paths = ensure_files(wanted, self._dirs(), self.mirrors, self.download)
        image_file = paths[f"{prefix}-images-idx3-ubyte.gz"]
        label_file = paths[f"{prefix}-labels-idx1-ubyte.gz"]
        # Which copy was read (root, a system folder, a download), as Frey Face says its file.
        log.info("%s: reading %s and %s.", self.name, image_file, label_file.name)
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.dtype != np.uint8 or images.shape[1:] != self.shape[1:]:
            raise DataError(
                f"{image_file}: {self.name} {prefix} images are {images.dtype} "
                f"{list(images.shape)}, expected uint8 [N, 28, 28]."
            )
        if labels.dtype.kind not in "iu" or labels.ndim != 1:  # not truncated to integers
            raise DataError(
                f"{label_file}: {self.name} {prefix} labels are {labels.dtype} "
                f"{list(labels.shape)}, expected integers [N] (uint8 in the published files).")
        if len(labels) != len(images):
            raise DataError(
                f"{label_file}: {self.name} {prefix} has {len(images)} images but "
                f"{len(labels)} labels.")
        return images, labels.astype(np.int64)

    def _load(self, names):
        out = {}
        if names & {"train", "val"}:
            images, labels = self._read("train")
            train, val = carve(len(images), self.val_size, self.name)
            out.update(train=(images[train], labels[train]), val=(images[val], labels[val]))
        if "test" in names:
            out["test"] = self._read("t10k")
        return out


class MNISTDataModule(IDXDataModule):
    """MNIST: 50000/10000/10000 train/val/test (val carved from the official training set).

    Files are read from ``root/mnist`` (gzipped or not) and downloaded there when missing.
    """

    name = "mnist"
    mirrors = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    files = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST: 50000/10000/10000 train/val/test, like MNIST.

    Files are read from ``root/fashion_mnist``, then ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist``), and downloaded into ``root/fashion_mnist`` otherwise.
    Default ``binarize="dynamic"``, so that the Bernoulli likelihood is a proper one; for the
    grayscale images use ``binarize="none"`` with a likelihood for [0, 1] data (e.g. the
    continuous Bernoulli).
    """

    name = "fashion_mnist"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    files = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
