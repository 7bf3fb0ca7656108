"""The held-out splits of a data set: carved by a fixed permutation (``SPLIT_SEED``), so every
run, whatever its ``seed``, trains, validates and tests on the same examples; the sizes a split
may be given as (a count, or a fraction); and the SHA-256 of a split that checkpoints record to
recognise their data.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import numpy as np

from vae_lightning.args import NonNegativeInt, PositiveInt, Range
from vae_lightning.errors import DataError

# Seed of the permutation that carves val (and Frey's test) split: fixed, so every run,
# whatever its ``seed``, sees the same validation and test examples.
SPLIT_SEED = 0


def digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of a split's images and labels: their dtypes, shapes and bytes."""
    sha = hashlib.sha256()
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(array)
    return sha.hexdigest()


def carve(n: int, size: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (rest, held-out ``size``) by the fixed SPLIT_SEED permutation."""
    if size >= n:
        raise DataError(f"val_size={size} is invalid for {name}: expected fewer than {n}.")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])


# The size of a held-out split: a number of examples, or a fraction (below 1) of them; the
# validation split may be empty (0: train on everything that is not test data).
SplitSize = PositiveInt | Annotated[float, Range(gt=0, lt=1)]
ValSize = NonNegativeInt | Annotated[float, Range(gt=0, lt=1)]


def split_count(size: int | float, n: int) -> int:
    """The examples a split of ``size`` (a count, or a fraction of ``n`` rounded, at least one)
    holds."""
    return size if isinstance(size, int) else max(1, round(size * n))


def held_out(n: int, val_size: int | float, test_size: int | float,
             what: str) -> dict[str, np.ndarray]:
    """Indices of the train, val and test splits of ``n`` examples, Frey Face's convention: test
    is carved from all ``n``, then val from the rest, each by the fixed SPLIT_SEED permutation, so
    every run, whatever its seed, sees the same splits; each split in the data's order.

    A fraction is rounded to a number of examples (at least one); at least one example must be
    left to train on, else a ``DataError`` naming ``what`` and the sizes."""
    val, test = (split_count(size, n) for size in (val_size, test_size))
    if val + test >= n:
        raise DataError(
            f"{what} holds {n} example{'' if n == 1 else 's'}: too few for "
            f"val_size={val_size!r} ({val}) and "
            f"test_size={test_size!r} ({test}); expected val + test below {n}, so that some are "
            "left to train on: add data, or lower val_size and test_size.")
    rest, test_idx = carve(n, test, what)
    train_of_rest, val_of_rest = carve(len(rest), val, what)
    return {"train": rest[train_of_rest], "val": rest[val_of_rest], "test": test_idx}
