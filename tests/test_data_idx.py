"""IDX reader/writer, the real MNIST test set and the bundled Frey Face."""

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from vae_lightning.data.frey import (
    FREY_SHA256,
    FREY_SHAPE,
    frey_images,
    frey_sha256,
    load_bundled_frey,
    read_frey_mat,
)
from vae_lightning.data.idx import IDXError, read_idx, write_idx

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} (the project's local data copies) is absent"
)


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.array([3, 1, 4, 1, 5], dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
        np.linspace(-1, 1, 10, dtype=np.float32),
    ],
)
def test_idx_round_trip(tmp_path, name, array):
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_gz_is_gzipped(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((4, 4), np.uint8))
    assert gzip.decompress((tmp_path / "x.gz").read_bytes())[:4] == bytes([0, 0, 8, 2])


def test_idx_wrong_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x1f\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(IDXError, match="does not start with an IDX header") as err:
        read_idx(tmp_path / "bad")
    assert "1f00" not in str(err.value)  # the file's bytes are not quoted


@pytest.mark.parametrize("name", ["t-idx3-ubyte", "t-idx3-ubyte.gz"])
def test_idx_truncated(tmp_path, name):
    write_idx(tmp_path / "full", np.ones((10, 28, 28), np.uint8))
    raw = (tmp_path / "full").read_bytes()[:-100]
    if name.endswith(".gz"):
        raw = gzip.compress(raw)
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(IDXError, match="truncated"):
        read_idx(tmp_path / name)


def test_idx_truncated_gzip_stream(tmp_path):
    write_idx(tmp_path / "x.gz", np.random.default_rng(0).integers(0, 255, (50, 28, 28), np.uint8))
    (tmp_path / "cut.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:-50])
    with pytest.raises(IDXError, match="cannot be read"):
        read_idx(tmp_path / "cut.gz")


@needs_shared
def test_real_mnist_test_set():
    images = read_idx(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (len(images),) and set(np.unique(labels)) == set(range(10))


def test_bundled_frey_matches_sha256():
    ff = load_bundled_frey()
    assert ff.shape == FREY_SHAPE and ff.dtype == np.uint8
    assert frey_sha256(ff) == FREY_SHA256
    faces = frey_images(ff)
    assert faces.shape == (1965, 28, 20)
    np.testing.assert_array_equal(faces[7].ravel(), ff[:, 7])


@needs_shared
def test_bundled_frey_equals_mat_file():
    np.testing.assert_array_equal(
        load_bundled_frey(), read_frey_mat(SHARED / "frey" / "frey_rawface.mat")
    )


@pytest.mark.parametrize("labels, words", [
    (np.full(20, 1.5, np.float32), "float32 [20], expected integers"),  # was read as 1
    (np.ones((20, 1), np.uint8), "uint8 [20, 1], expected integers [N]"),
    (np.ones(19, np.uint8), "20 images but 19 labels"),
])
def test_mnist_labels_that_are_not_one_integer_per_image_are_refused_naming_the_file(
        tmp_path, labels, words):
    from vae_lightning.data import MNISTDataModule
    from vae_lightning.errors import DataError

    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz",
                  labels if prefix == "train" else np.zeros(n, np.uint8))
    dm = MNISTDataModule(root=tmp_path, val_size=2, download=False)
    with pytest.raises(DataError, match=re.escape(words)) as err:
        dm.setup()
    assert "train-labels-idx1-ubyte.gz" in str(err.value)
