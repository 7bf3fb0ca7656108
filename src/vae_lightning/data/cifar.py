"""CIFAR-10 from its official binary archive, read straight from the tar (nothing extracted).

The binary version (``cifar-10-binary.tar.gz``), not the Python one: the Python version's
batches are pickles, and unpickling runs whatever code a file names. The binary format is
plain: each record is 1 label byte, then 3072 pixel bytes, the red, green and blue 32x32
planes in turn, rows top to bottom; six files of 10000 records (``data_batch_1..5.bin``, the
training set, and ``test_batch.bin``). Each file's size (on disk, or in the tar's member header)
is checked before it is read: a whole number of records, and no more than the memory available.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from vae_lightning import files
from vae_lightning.args import NonNegativeInt, checked
from vae_lightning.errors import DataError

from .datamodules import VAEDataModule
from .download import check_memory, describe, ensure_files, find, not_regular, open_data
from .splits import carve

log = logging.getLogger(__name__)

RECORD = 1 + 3 * 32 * 32  # bytes per image: its label, then its pixels
TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST = ("test_batch.bin",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def check_size(size: int, where: str, read: int = 0) -> None:
    """A batch file must hold a whole, positive number of records, and fit in the memory
    available besides the ``read`` bytes of the files read before it."""
    if size == 0 or size % RECORD:
        raise DataError(f"{where} is {size} bytes: expected a positive multiple of {RECORD} "
                        f"(1 label byte and 3072 pixel bytes per image; {10000 * RECORD} in the "
                        "official archive): it is truncated, or not CIFAR-10's binary version.")
    check_memory(read + size, f"{where} is {size // RECORD:,} images",
                 "expected CIFAR-10's batches of 10000 images: replace the file")


def parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's bytes as (uint8 images ``[N, 3, 32, 32]``, int64 labels ``[N]``)."""
    check_size(len(raw), where)
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= len(CLASSES))
    if len(bad):
        raise DataError(f"{where} holds a label outside 0..9 (image {int(bad[0])}, of "
                        f"{len(bad)} such): expected CIFAR-10's ten classes.")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


class CIFAR10DataModule(VAEDataModule):
    """CIFAR-10: 32x32 colour images, ``shape = (3, 32, 32)``, ten classes (``CLASSES``);
    45000/5000/10000 train/val/test by default (val, ``val_size`` images, carved from the
    official training set by the fixed permutation of the other sets).

    Source, first found: the extracted batches in ``root/cifar10/cifar-10-batches-bin``; the
    archive ``root/cifar10/cifar-10-binary.tar.gz`` (or the ``.tar``), read in place with
    ``tarfile``; else the archive downloaded there from the official site (``download=true``)
    with its md5 checked and an atomic write (``download.ensure_files``). A local archive is
    trusted if its structure is right (each batch file a whole number of records), as MNIST's
    local files are: the md5 is the canonical archive's.

    ``binarize``: "none" (default: colour pixels in [0, 1]), "static" or "dynamic".
    """

    name = "cifar10"
    shape = (3, 32, 32)
    archive = "cifar-10-binary.tar.gz"
    files = {archive: "c32a1d4ab5d03f1284b67883e8d87530"}
    mirrors = ("https://www.cs.toronto.edu/~kriz/",)
    extracted = "cifar-10-batches-bin"

    @checked
    def __init__(
        self,
        *args,
        val_size: NonNegativeInt = 5000,
        binarize: Literal["none", "static", "dynamic"] = "none",
        **kwargs,
    ) -> None:
        super().__init__(*args, val_size=val_size, binarize=binarize, **kwargs)

    def _folder(self) -> Path | None:
        """The extracted batches, when every one of them is there (a batch that is there but
        not a regular file, e.g. a FIFO or a dangling link, is an error: ``files.kind``)."""
        folder = self.root / self.name / self.extracted
        found = {f: files.kind(folder / f) for f in TRAIN + TEST}
        for name, kind in found.items():
            if kind not in (None, "missing"):
                raise not_regular(str(folder / name), kind, "a CIFAR-10 batch file")
        return folder if all(kind is None for kind in found.values()) else None

    def _archive(self) -> Path:
        folder = self.root / self.name
        if self.download and find(self.archive, [folder]) is None:
            log.info("Downloading %s (about 170 MB) into %s", self.archive, folder)
        return ensure_files(self.files, [folder], self.mirrors, self.download)[self.archive]

    def prepare_data(self) -> None:
        if self._folder() is None:
            self._archive()

    def _read(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels of the batch files ``names``, in that order."""
        folder = self._folder()
        raw = _files(folder, names) if folder is not None else _members(self._archive(), names)
        batches = [parse_batch(data, where) for where, data in raw.items()]
        return (np.concatenate([b[0] for b in batches]),
                np.concatenate([b[1] for b in batches]))

    def _load(self, names):
        out = {}
        if names & {"train", "val"}:
            images, labels = self._read(TRAIN)
            train, val = carve(len(images), self.val_size, self.name)
            out.update(train=(images[train], labels[train]), val=(images[val], labels[val]))
        if "test" in names:
            out["test"] = self._read(TEST)
        return {s: out[s] for s in names}


def _files(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """``{"<path>": bytes}`` of the extracted batch files ``names`` in ``folder``, each size
    checked (``check_size``) before it is read."""
    raw: dict[str, bytes] = {}
    for name in names:
        with open_data(folder / name, "a CIFAR-10 batch file") as fh:
            check_size(os.fstat(fh.fileno()).st_size, str(folder / name),
                       sum(map(len, raw.values())))
            raw[str(folder / name)] = fh.read()
    return raw


def _members(archive: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """``{"<archive> member <path>": bytes}`` of the batch files ``names`` in the tar
    ``archive`` (gzipped or not), in the order of ``names``, each matched by its file name
    wherever it sits in the tar; one pass, nothing written to disk."""
    found: dict[str, tuple[str, bytes]] = {}
    try:
        with (open_data(archive, f"CIFAR-10's archive {CIFAR10DataModule.archive}") as fh,
              tarfile.open(fileobj=fh, mode="r:*") as tar):
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if name not in names or name in found:
                    continue
                where = f"{archive} member {member.name}"
                if not member.isfile():
                    raise DataError(f"{where} is not a file: expected CIFAR-10's binary archive.")
                check_size(member.size, where, sum(len(data) for _, data in found.values()))
                found[name] = (where, tar.extractfile(member).read())
                if len(found) == len(names):
                    break
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{archive} cannot be read as a tar archive ({describe(err)}): it is "
                        "truncated or corrupt; remove it (download=true fetches it "
                        "again).") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: expected CIFAR-10's binary "
                        f"archive ({CIFAR10DataModule.archive}, with {', '.join(TRAIN + TEST)}).")
    return dict(found[n] for n in names)
