"""dSprites, regenerated: the published factor grid, the fast rendering equals the definition drawn
pixel by pixel, each factor does what it names, the reference hashes, the cache (written, read,
checked, refused when corrupt, a FIFO or on a full disk), the splits and the factors served
beside the images, and the configs."""

import math
import os
import subprocess
import time

import numpy as np
import pytest
import torch
from compose import compose_train

from vae_lightning.config import instantiate_node
from vae_lightning.data import sprite_rendering
from vae_lightning.data.dsprites import DSpritesDataModule
from vae_lightning.data.sprite_rendering import (
    FACTOR_VALUES,
    FACTORS,
    SHA256,
    cache_path,
    grid_indices,
    read_cache,
    render,
    render_one,
    sha256,
    sizes,
    unpack,
)
from vae_lightning.errors import DataError, UnwritableError

SMALL = {"variant": "small", "val_size": 0.1, "test_size": 0.1}


@pytest.fixture(scope="module")
def small():
    return render("small")


def test_the_published_factor_grid():
    assert FACTORS == ("shape", "scale", "orientation", "position_x", "position_y")
    assert sizes("full") == (3, 6, 40, 32, 32) and math.prod(sizes("full")) == 737280
    assert sizes("small") == (3, 3, 10, 8, 8) and math.prod(sizes("small")) == 5760
    np.testing.assert_array_equal(FACTOR_VALUES["scale"], np.linspace(0.5, 1, 6))
    np.testing.assert_array_equal(FACTOR_VALUES["orientation"], np.linspace(0, 2 * np.pi, 40))
    for axis in ("position_x", "position_y"):
        np.testing.assert_array_equal(FACTOR_VALUES[axis], np.linspace(0, 1, 32))
    np.testing.assert_array_equal(FACTOR_VALUES["shape"], [1.0, 2.0, 3.0])


def test_the_small_variant_renders_the_reference_and_each_image_is_its_definition(small):
    assert small.dtype == np.uint8 and small.shape == (5760, 512)
    assert sha256(small) == SHA256["small"]
    rng = np.random.default_rng(0)
    for index in rng.choice(len(small), 150, replace=False):
        factors = np.unravel_index(index, sizes("small"))
        full = grid_indices("small", np.array(factors)[None])[0]
        np.testing.assert_array_equal(unpack(small[index:index + 1])[0], render_one(full))


def _image(shape=0, scale=5, angle=0, x=15, y=15):
    return render_one((shape, scale, angle, x, y))


def _centre(image):
    rows, cols = np.nonzero(image)
    return cols.mean(), rows.mean()


def test_each_factor_does_what_it_names():
    # Position: one pixel per step, x to the right, y downwards; the sprite stays whole.
    x0, y0 = _centre(_image(x=3, y=7))
    for dx, dy in [(1, 0), (0, 1), (20, 9)]:
        x1, y1 = _centre(_image(x=3 + dx, y=7 + dy))
        assert (x1 - x0, y1 - y0) == pytest.approx((dx, dy))
    area = _image(x=0, y=0).sum()
    for x, y in [(0, 31), (31, 0), (31, 31)]:
        assert _image(x=x, y=y).sum() == area  # nothing cut at the borders
    for shape in range(3):
        for angle in (0, 13):
            corner = _image(shape, 5, angle, 31, 31)
            assert not corner[0].any() and not corner[:, 0].any()
    # Scale: the area grows as scale squared.
    for shape in range(3):
        areas = [_image(shape, s).sum() for s in range(6)]
        assert areas == sorted(areas)
        assert areas[5] / areas[0] == pytest.approx(4, rel=0.2)
    # Orientation: 0 and 2 pi draw the same image (as in the original); a square turned by
    # about a quarter turn keeps its area; the ellipse is wide at 0 and tall at a quarter turn.
    for shape in range(3):
        np.testing.assert_array_equal(_image(shape, 3, 0), _image(shape, 3, 39))
    assert _image(0, 5, 10).sum() == pytest.approx(_image(0, 5, 0).sum(), rel=0.05)
    wide, tall = _image(1, 5, 0), _image(1, 5, 10)  # 10 steps of 2 pi / 39: about 92 degrees
    assert np.ptp(np.nonzero(wide)[1]) > 1.8 * np.ptp(np.nonzero(wide)[0])
    assert np.ptp(np.nonzero(tall)[0]) > 1.8 * np.ptp(np.nonzero(tall)[1])
    # The heart points down at orientation 0: its lobes (the wider rows) are above the middle.
    heart = _image(2, 5, 0)
    widths = heart.sum(1)
    rows = np.nonzero(widths)[0]
    assert np.argmax(widths) < rows.mean() and widths[rows[-1]] < widths[rows[0]] + 3


def test_all_images_of_the_small_grid_differ_but_the_first_and_last_orientations(small):
    distinct = len(np.unique(small, axis=0))
    assert distinct == len(small)  # its orientations step by 4: 0 .. 36 of 39, no 2 pi


@pytest.mark.slow
def test_the_full_product_renders_fast_to_the_reference_and_holds_the_small_grid(small):
    start = time.perf_counter()
    full = render("full")
    seconds = time.perf_counter() - start
    assert full.shape == (737280, 512) and sha256(full) == SHA256["full"]
    assert seconds < 60, seconds
    steps = sprite_rendering.VARIANTS["small"]
    grid = np.ix_(*(np.arange(0, size, step) for size, step in zip(sizes("full"), steps)))
    index = np.ravel_multi_index(grid, sizes("full")).ravel()
    np.testing.assert_array_equal(full[index], small)


def test_a_rendering_other_than_the_reference_is_refused(monkeypatch):
    monkeypatch.setattr(sprite_rendering, "HALF_SIDE", 9.8)  # another drawing of the square
    with pytest.raises(DataError, match="differ from the reference rendering"):
        sprite_rendering.rendered("small")


def test_the_module_caches_under_the_root_and_reads_the_cache_back(tmp_path):
    dm = DSpritesDataModule(root=tmp_path, **SMALL)
    path = cache_path(tmp_path, "small")
    assert path == tmp_path / "dsprites" / "dsprites-small.npy"
    dm.prepare_data()
    assert sha256(np.load(path)) == SHA256["small"]
    written = path.stat().st_mtime_ns
    dm.setup("fit")
    assert path.stat().st_mtime_ns == written  # read, not rendered again
    again = DSpritesDataModule(root=tmp_path, **SMALL)
    again.setup("fit")
    assert again.digests == dm.digests


def test_without_download_nothing_is_written(tmp_path):
    dm = DSpritesDataModule(root=tmp_path, download=False, **SMALL)
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.splits["test"][0]) == 576 and not (tmp_path / "dsprites").exists()


def test_a_corrupt_cache_is_refused_naming_the_file(tmp_path, small):
    path = cache_path(tmp_path, "small")
    path.parent.mkdir()
    bad = small.copy()
    bad[100, 7] ^= 1  # one pixel
    np.save(path, bad)
    with pytest.raises(DataError, match="not the reference rendering") as err:
        DSpritesDataModule(root=tmp_path, **SMALL).setup("test")
    assert str(path) in str(err.value) and "Remove it" in str(err.value)
    np.save(path, small[:10])
    with pytest.raises(DataError, match=r"expected uint8 \[5760, 512\]"):
        read_cache(path, "small")
    path.write_bytes(b"not an array")
    with pytest.raises(DataError, match="cannot be read as a .npy array"):
        read_cache(path, "small")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(DataError, match="a FIFO"):
        read_cache(path, "small")


def test_a_full_disk_is_exit_74_and_leaves_no_partial_cache(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with pytest.raises(UnwritableError, match="data.download=false") as err:
            DSpritesDataModule(root=mount, **SMALL).prepare_data()
        assert err.value.exit_code == 74
        assert list((mount / "dsprites").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_splits_labels_and_factors(tmp_path):
    dm = DSpritesDataModule(root=tmp_path, **SMALL)
    dm.setup("fit")
    x, y = dm.splits["train"]
    assert {s: len(dm.splits[s][0]) for s in ("train", "val", "test")} == {
        "train": 4608, "val": 576, "test": 576}
    every = np.concatenate([dm.indices[s] for s in ("train", "val", "test")])
    assert sorted(every) == list(range(5760))  # disjoint, and all images
    assert x.dtype == torch.uint8 and set(x.unique().tolist()) == {0, 255}
    for split in ("train", "test"):
        images, labels = dm.splits[split]
        factors = dm.factors(split)
        assert factors.shape == (len(images), 5) and factors.dtype == np.int64
        np.testing.assert_array_equal(labels.numpy(), factors[:, 0])  # y is the shape
        for i in (0, len(images) // 2, len(images) - 1):
            np.testing.assert_array_equal(images[i].numpy() != 0, render_one(factors[i]))
    assert dm.classes == ("square", "ellipse", "heart")
    # Batches stay (x, y); the model inputs are exactly the 0/1 images, binarized or not.
    batch = next(iter(dm.train_dataloader()))
    inputs, labels = dm.to_inputs(batch)
    assert inputs.shape == (100, 1, 64, 64) and torch.equal(inputs, batch[0][:, None] / 255)
    plain = DSpritesDataModule(root=tmp_path, binarize="none", **SMALL)
    plain.setup("test")
    assert torch.equal(plain.evaluation_data("test"), dm.evaluation_data("test"))


def test_ground_truth_serves_the_image_of_any_factors(tmp_path):
    dm = DSpritesDataModule(root=tmp_path, download=False, **SMALL)
    truth = dm.ground_truth()
    assert truth.names == FACTORS and truth.sizes == (3, 3, 10, 8, 8)
    factors = np.array([[0, 0, 0, 0, 0], [2, 2, 9, 7, 7], [1, 1, 3, 2, 5]])
    images = truth.images(factors)
    assert images.shape == (3, 1, 64, 64) and images.dtype == torch.float32
    for image, f in zip(images, grid_indices("small", factors)):
        np.testing.assert_array_equal(image[0].numpy() == 1, render_one(f))


def test_the_configs_build_the_data_set_with_the_bernoulli_likelihood(tmp_path):
    for name, variant in (("dsprites", "full"), ("dsprites_small", "small")):
        cfg = compose_train([f"data={name}", f"data.root={tmp_path}"], tmp_path)
        dm = instantiate_node(cfg.data, "data")
        assert isinstance(dm, DSpritesDataModule) and dm.variant == variant
        assert dm.shape == (1, 64, 64)
        assert cfg.model.decoder.likelihood._target_.endswith("Bernoulli")
    cfg = compose_train(["data=dsprites_small", f"data.root={tmp_path}", "data.binarize=static"],
                        tmp_path)
    with pytest.raises(Exception, match="binarize"):
        instantiate_node(cfg.data, "data")
