"""data=folder: PNG and JPEG files, class subfolders, resize and crop, the decoded cache, the
fixed split, one-line errors for bad files, and training end to end."""

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from compose import compose_train
from PIL import Image

from vae_lightning.args import ArgumentError
from vae_lightning.data import DataError, FolderDataModule, images
from vae_lightning.data import folder as folder_module
from vae_lightning.data.download import DataNotFoundError
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def smooth_image(seed: int, size=(8, 8), channels=3) -> np.ndarray:
    """A smooth uint8 image ``[H, W(, 3)]`` (JPEG keeps it within a few levels), distinct per
    seed through its mean level."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [40 + 6 * seed + 4 * yy + 3 * xx + 20 * c for c in range(channels)]
    image = np.stack(planes, -1).clip(0, 255).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def write(path: Path, image: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(image).save(path, format=fmt, **kwargs)


@pytest.fixture
def classes_dir(tmp_path) -> tuple[Path, dict[str, tuple[np.ndarray, int]]]:
    """Twelve 8x8 RGB images in two class folders (one nested deeper), PNG and JPEG with
    extensions in several cases: ``(folder, {relative path: (pixels [3, H, W], label)})``."""
    root = tmp_path / "images"
    names = ["cats/a.png", "cats/b.PNG", "cats/c.jpg", "cats/d.png", "cats/e.JPEG",
             "dogs/a.png", "dogs/b.jpeg", "dogs/c.png", "dogs/puppies/d.png", "dogs/e.Jpg",
             "dogs/f.png", "dogs/g.png"]
    written = {}
    for i, name in enumerate(names):
        image = smooth_image(i)
        jpeg = name.lower().endswith((".jpg", ".jpeg"))
        write(root / name, image, **({"quality": 95} if jpeg else {}))
        written[name] = (image.transpose(2, 0, 1), 0 if name.startswith("cats") else 1)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"skipped: hidden")
    return root, written


def module(path, tmp_path, **kwargs) -> FolderDataModule:
    kwargs = {"size": 8, "val_size": 2, "test_size": 2, "batch_size": 4, **kwargs}
    return FolderDataModule(path=str(path), root=str(tmp_path / "data-root"), **kwargs)


def all_splits(dm) -> tuple[np.ndarray, np.ndarray]:
    x = torch.cat([dm.splits[s][0] for s in ("train", "val", "test")]).numpy()
    y = torch.cat([dm.splits[s][1] for s in ("train", "val", "test")]).numpy()
    return x, y


def match(loaded: np.ndarray, written: dict[str, tuple[np.ndarray, int]]) -> list[str]:
    """The written file each loaded image is closest to (every one used once)."""
    names = list(written)
    found = [names[int(np.argmin([np.abs(x.astype(int) - written[n][0]).mean() for n in names]))]
             for x in loaded]
    assert sorted(found) == sorted(names)
    return found


def test_class_subfolders_png_and_jpeg(classes_dir, tmp_path, caplog):
    path, written = classes_dir
    dm = module(path, tmp_path)
    assert dm.shape == (3, 8, 8) and dm.name == "folder"  # known before any image is read
    with caplog.at_level("INFO"):
        dm.setup()
    assert {k: len(v[0]) for k, v in dm.splits.items()} == {"train": 8, "val": 2, "test": 2}
    assert dm.classes == ("cats", "dogs")
    # Which subfolder is which label, said once.
    assert f"data.path={str(path)!r}: 2 class subfolders, labelled in sorted order: 0 'cats', " \
        "1 'dogs'." in caplog.text
    assert caplog.text.count("class subfolders") == 1
    x, y = all_splits(dm)
    assert x.dtype == np.uint8 and x.shape == (12, 3, 8, 8)
    for image, label, name in zip(x, y, match(x, written), strict=True):
        assert label == written[name][1]
        error = np.abs(image.astype(int) - written[name][0])
        if name.lower().endswith(".png"):
            assert error.max() == 0, name  # PNG: the pixels written
        else:
            assert error.mean() < 3 and error.max() < 16, name  # JPEG: within its loss
    batch = next(iter(dm.train_dataloader()))
    inputs, labels = dm.to_inputs(batch)
    assert inputs.dtype == torch.float32 and inputs.shape == (4, 3, 8, 8)
    assert torch.equal(inputs, batch[0].float() / 255) and labels.dtype == torch.int64


def test_flat_folder_grayscale_labels_minus_one(tmp_path):
    path = tmp_path / "flat"
    written = {f"{i:02d}.png": (smooth_image(i, channels=1)[None], -1) for i in range(10)}
    for name, (image, _) in written.items():
        write(path / name, image[0])
    dm = module(path, tmp_path, channels=1, val_size=0.1, test_size=0.2)
    assert dm.shape == (1, 8, 8)
    dm.setup()
    assert {k: len(v[0]) for k, v in dm.splits.items()} == {"train": 7, "val": 1, "test": 2}
    x, y = all_splits(dm)
    assert (y == -1).all() and dm.classes == ()
    for image, name in zip(x, match(x, written), strict=True):
        assert np.array_equal(image, written[name][0])
    batch = next(iter(dm.val_dataloader()))
    inputs, _ = dm.to_inputs(batch)
    assert torch.equal(inputs, batch[0].reshape(-1, 1, 8, 8).float() / 255)


def test_colour_file_read_as_grayscale_and_grayscale_as_colour(tmp_path):
    rgb = smooth_image(3)
    write(tmp_path / "c" / "rgb.png", rgb)
    write(tmp_path / "g" / "gray.png", rgb[..., 0])
    gray = images.decode(tmp_path / "c" / "rgb.png", (8, 8), 1)
    assert gray.shape == (1, 8, 8)
    assert np.array_equal(gray[0], np.asarray(Image.fromarray(rgb).convert("L")))
    colour = images.decode(tmp_path / "g" / "gray.png", (8, 8), 3)
    assert colour.shape == (3, 8, 8) and all(np.array_equal(c, rgb[..., 0]) for c in colour)


def test_grey_images_decoded_to_three_channels_are_warned_about(tmp_path, caplog):
    """data.channels=3 is the default: a folder of grey images (MNIST digits as PNGs) would
    train on three copies of each pixel without a word; a warning names data.channels=1, once,
    when the images are decoded (not for colour images)."""
    for kind, image in (("grey", smooth_image(0, channels=1)), ("colour", smooth_image(0))):
        for i in range(6):
            write(tmp_path / kind / f"{i}.png", image)
        with caplog.at_level("WARNING", logger=folder_module.__name__):
            caplog.clear()
            module(tmp_path / kind, tmp_path, channels=3).setup()
        grey = [r.getMessage() for r in caplog.records if "all grey" in r.getMessage()]
        assert len(grey) == (kind == "grey"), (kind, grey)
        if grey:
            assert "data.channels=1 models one" in grey[0]


def test_resize_shorter_side_then_centre_crop(tmp_path):
    rng = np.random.default_rng(0)
    wide, tall = rng.integers(0, 256, (8, 16, 3), np.uint8), rng.integers(0, 256, (16, 8), np.uint8)
    write(tmp_path / "wide.png", wide)
    write(tmp_path / "tall.png", tall)
    # Already the right height (width): the centre columns (rows), pixel for pixel.
    got = images.decode(tmp_path / "wide.png", (8, 8), 3)
    assert np.abs(got.astype(int) - wide[:, 4:12].transpose(2, 0, 1)).max() <= 1
    got = images.decode(tmp_path / "tall.png", (8, 8), 1)[0]
    assert np.abs(got.astype(int) - tall[4:12]).max() <= 1
    # Scaled down by 2 (16x32 to 8x16), then cropped to 8x8: blocks of 2x2 become pixels.
    blocks = rng.integers(0, 256, (8, 16), np.uint8)
    write(tmp_path / "big.png", np.kron(blocks, np.ones((2, 2), np.uint8)))
    got = images.decode(tmp_path / "big.png", (8, 8), 1)[0]
    error = {left: np.abs(got.astype(int) - blocks[:, left:left + 8]).mean() for left in range(9)}
    assert error[4] < 20 and error[4] < min(e for left, e in error.items() if left != 4) / 2
    # [H, W] sizes: a uniform image stays uniform whatever the aspect.
    write(tmp_path / "flat.png", np.full((30, 50, 3), 77, np.uint8))
    got = images.decode(tmp_path / "flat.png", (4, 6), 3)
    assert got.shape == (3, 4, 6) and (got == 77).all()
    dm = FolderDataModule(path=str(tmp_path), size=[4, 6], channels=3, val_size=1, test_size=1)
    assert dm.shape == (3, 4, 6)


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((4, 8), np.uint8)
    image[:, :4] = 255  # left half white, stored 4 rows x 8 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 8 rows x 4 columns, top half white
    Image.fromarray(image).save(tmp_path / "turned.png", exif=exif)
    got = images.decode(tmp_path / "turned.png", (8, 4), 1)[0]
    assert got.shape == (8, 4) and (got[:4] == 255).all() and (got[4:] == 0).all()


def test_sixteen_bit_png_keeps_the_high_byte(tmp_path):
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    got = images.decode(tmp_path / "deep.png", (8, 8), 1)[0]
    assert np.array_equal(got, (wide >> 8).astype(np.uint8))


def listing(folder: Path) -> dict[str, int]:
    """Every path under ``folder`` and its modification time."""
    return {str(p.relative_to(folder)): p.lstat().st_mtime_ns for p in folder.rglob("*")}


def test_cache_is_used_then_invalidated_when_a_file_changes(classes_dir, tmp_path, monkeypatch):
    path, _ = classes_dir
    before = listing(path)
    first = module(path, tmp_path)
    first.prepare_data()
    first.setup()
    # Under the data root, in a folder of its own named by the image folder's resolved path;
    # nothing is written into the image folder.
    assert first.cache_dir.parent == tmp_path / "data-root" / folder_module.CACHE_DIR
    assert listing(path) == before
    caches = list(first.cache_dir.iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("8x8-c3-")
    assert np.load(caches[0], allow_pickle=False).shape == (12, 3, 8, 8)

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder_module, "decode", no_decoding)
    second = module(path, tmp_path)
    second.prepare_data()
    second.setup()
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split][0], second.splits[split][0])
    # Another size is another cache: the first one stays.
    monkeypatch.undo()
    module(path, tmp_path, size=4).setup("test")
    assert len(list(first.cache_dir.iterdir())) == 2

    # Change one file (same name and size in bytes, a new modification time): decoded again.
    changed = path / "cats" / "a.png"
    write(changed, np.full((8, 8, 3), 255, np.uint8))
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    monkeypatch.setattr(folder_module, "decode", no_decoding)
    with pytest.raises(AssertionError, match="decoded again"):
        module(path, tmp_path).setup()
    monkeypatch.undo()
    third = module(path, tmp_path)
    third.setup()
    assert any(((third.splits[s][0] == 255).flatten(1).all(1)).any() for s in third.splits)
    names = sorted(p.name for p in first.cache_dir.iterdir())
    assert len(names) == 2 and caches[0].name not in names  # the stale 8x8 cache is gone
    # Adding an image is a change too.
    write(path / "dogs" / "new.png", smooth_image(40))
    monkeypatch.setattr(folder_module, "decode", no_decoding)
    with pytest.raises(AssertionError, match="decoded again"):
        module(path, tmp_path).setup()


def test_unreadable_cache_is_rebuilt(classes_dir, tmp_path):
    path, _ = classes_dir
    dm = module(path, tmp_path)
    dm.setup("test")
    (cache,) = dm.cache_dir.iterdir()
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    again = module(path, tmp_path)
    again.setup("test")
    assert torch.equal(again.splits["test"][0], dm.splits["test"][0])
    assert np.load(cache, allow_pickle=False).shape == (12, 3, 8, 8)


def test_cache_option_chooses_where_and_keeps_folders_apart(classes_dir, tmp_path, monkeypatch):
    path, _ = classes_dir
    other = tmp_path / "other"
    for i in range(10):
        write(other / f"{i}.png", smooth_image(i))
    chosen = tmp_path / "my-cache"
    one = module(path, tmp_path, cache=str(chosen))
    two = module(other, tmp_path, cache=str(chosen), val_size=1, test_size=1)
    one.setup()
    two.setup()
    assert one.cache_dir.parent == two.cache_dir.parent == chosen
    assert one.cache_dir != two.cache_dir  # one subfolder per image folder: neither removes
    assert len(list(one.cache_dir.iterdir())) == len(list(two.cache_dir.iterdir())) == 1
    assert not (tmp_path / "data-root").exists()
    # The same folder by another name (a symbolic link) is the same cache.
    (tmp_path / "alias").symlink_to(path)
    monkeypatch.setattr(folder_module, "decode", lambda *a: pytest.fail("decoded again"))
    again = module(tmp_path / "alias", tmp_path, cache=str(chosen))
    again.setup()
    assert again.cache_dir == one.cache_dir
    assert torch.equal(again.splits["train"][0], one.splits["train"][0])


def test_no_cache_anywhere_still_trains(classes_dir, tmp_path, caplog):
    path, _ = classes_dir
    (tmp_path / "a-file").write_text("not a folder")  # the cache cannot be created under it
    dm = module(path, tmp_path, cache=str(tmp_path / "a-file"))
    dm.setup()
    assert len(dm.splits["train"][0]) == 8
    assert "Could not write the image cache" in caplog.text
    assert "the next run decodes the images again; set data.cache" in caplog.text


def test_own_size_by_default(tmp_path, monkeypatch):
    path = tmp_path / "own"
    written = {f"{i}.png": smooth_image(i, size=(6, 10)) for i in range(10)}
    for name, image in written.items():
        write(path / name, image)
    dm = FolderDataModule(path=str(path), root=str(tmp_path / "root"), val_size=1, test_size=1)
    assert dm.shape == (3, 6, 10)  # known before any image is decoded: from their headers
    dm.setup()
    x, _ = all_splits(dm)
    assert sorted(map(bytes, x)) == sorted(bytes(i.transpose(2, 0, 1)) for i in written.values())
    (cache,) = dm.cache_dir.iterdir()
    assert cache.name.startswith("native-c3-")
    # Later runs take the size from the cache: no image is opened.
    monkeypatch.setattr(folder_module, "image_size", lambda *a: pytest.fail("opened"))
    monkeypatch.setattr(folder_module, "decode", lambda *a: pytest.fail("decoded again"))
    again = FolderDataModule(path=str(path), root=str(tmp_path / "root"), val_size=1,
                             test_size=1)
    assert again.shape == (3, 6, 10)
    again.setup()
    assert torch.equal(again.splits["train"][0], dm.splits["train"][0])


def test_images_of_different_sizes_need_a_size(tmp_path):
    path = tmp_path / "mixed"
    for i in range(4):
        write(path / f"{i}.png", smooth_image(i, size=(8, 8)))
    write(path / "sub" / "odd.jpg", smooth_image(9, size=(8, 12)))
    with pytest.raises(DataError, match="holds images of different sizes") as err:
        FolderDataModule(path=str(path), root=str(tmp_path / "root"))
    message = str(err.value)
    assert f"{path / '0.png'} (8x8)" in message and f"{path / 'sub' / 'odd.jpg'} (8x12)" in message
    assert "data.size" in message and len(message.splitlines()) == 1
    assert FolderDataModule(path=str(path), size=8, root=str(tmp_path / "root")).shape == (3, 8, 8)


def test_split_is_fixed_across_seeds_and_stages(classes_dir, tmp_path):
    path, _ = classes_dir

    def split(seed, stage, name):
        dm = module(path, tmp_path, seed=seed)
        dm.setup(stage)
        return dm.splits[name][0]

    assert torch.equal(split(0, None, "val"), split(5, "validate", "val"))
    assert torch.equal(split(0, None, "test"), split(9, "test", "test"))
    assert torch.equal(split(1, "fit", "train"), split(2, None, "train"))


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_binarized(classes_dir, tmp_path, mode):
    path, _ = classes_dir
    dm = module(path, tmp_path, binarize=mode)
    dm.setup()
    x, _ = dm.to_inputs(next(iter(dm.train_dataloader())))
    assert x.shape == (4, 3, 8, 8) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert set(dm.evaluation_data("test").unique().tolist()) <= {0.0, 1.0}


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("content", [
    b"this is not an image",
    png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))[:1500],  # cut
    png_bytes(smooth_image(0))[:8] + b"\0" * 200,  # a PNG signature, then garbage
    b"\xff\xd8\xff\xe0" + b"\0" * 50,  # a JPEG marker, then garbage
    b"",
], ids=["text", "truncated", "garbage", "bad-jpeg", "empty"])
def test_bad_image_is_a_data_error_naming_the_file(classes_dir, tmp_path, content):
    path, _ = classes_dir
    bad = path / "dogs" / "broken.jpg"
    bad.write_bytes(content)
    dm = module(path, tmp_path)
    with pytest.raises(DataError, match="cannot be read as an image") as err:
        dm.prepare_data()
    assert str(bad) in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not dm.cache_dir.exists() or not any(dm.cache_dir.iterdir())  # nothing cached


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images") as err:
        FolderDataModule(path=str(empty)).setup()
    assert str(empty) in str(err.value) and ".png, .jpg, .jpeg" in str(err.value)
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        FolderDataModule(path=str(tmp_path / "missing"))
    few = tmp_path / "few"
    for i in range(2):
        write(few / f"{i}.png", smooth_image(i))
    with pytest.raises(DataError, match="holds 2 examples: too few for val_size=0.1"):
        FolderDataModule(path=str(few), size=8, root=str(tmp_path / "root")).setup()


@pytest.mark.parametrize("kwargs, word", [
    ({"channels": 2}, "channels=2 is not allowed: expected one of 1, 3"),
    ({"size": 0}, "size=0 is not allowed"),
    ({"size": [8]}, r"size=\[8\] is not allowed: expected null \(the images' own size\), an "
                    r"integer or a list \[H, W\]"),
    ({"size": [8, 0]}, r"size=\[8, 0\] is not allowed"),
    ({"val_size": 1.5}, "val_size=1.5 is not allowed: expected an integer >= 0 or a number > 0 "
                        "and < 1"),
    ({"test_size": 0}, "test_size=0 is not allowed"),
    ({"binarize": "otsu"}, "binarize='otsu' is not allowed"),
])
def test_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ArgumentError, match=word):
        FolderDataModule(path=str(tmp_path), **kwargs)


def test_config_picks_the_continuous_bernoulli_and_reports_bad_files(classes_dir, tmp_path):
    path, _ = classes_dir
    cfg = compose_train(["data=folder", f"data.path={path}", "data.size=[8, 6]"], tmp_path)
    assert cfg.model.decoder.likelihood._target_ == "vae_lightning.likelihoods.ContinuousBernoulli"
    run = build_run(cfg)
    assert run.datamodule.shape == (3, 8, 6) and tuple(run.model.data_shape) == (3, 8, 6)
    with pytest.raises(DataError, match="is not a folder"):
        build_run(compose_train(["data=folder", f"data.path={tmp_path / 'nowhere'}"], tmp_path))


def test_config_defaults_keep_the_images_size_and_cache_under_the_data_root(tmp_path):
    """data=folder with only data.path: the images' own size, and the cache under data.root
    (a subfolder named by the folder), nothing written into the image folder; data.cache
    moves it."""
    path = tmp_path / "images"
    for i in range(10):
        write(path / f"{i}.png", smooth_image(i, size=(10, 12)))
    before = listing(path)
    root = tmp_path / "root"
    cfg = compose_train(["data=folder", f"data.path={path}", f"data.root={root}"], tmp_path)
    assert cfg.data.size is None and cfg.data.cache is None
    dm = build_run(cfg).datamodule
    assert dm.shape == (3, 10, 12)
    dm.setup()
    assert dm.cache_dir.parent == root / folder_module.CACHE_DIR
    (cache,) = dm.cache_dir.iterdir()
    assert cache.name.startswith("native-c3-")
    assert listing(path) == before
    chosen = tmp_path / "elsewhere"
    cfg = compose_train(["data=folder", f"data.path={path}", f"data.root={root}",
                         f"data.cache={chosen}", "data.size=8"], tmp_path)
    moved = build_run(cfg).datamodule
    moved.setup()
    assert moved.cache_dir.parent == chosen and len(list(moved.cache_dir.iterdir())) == 1
    assert listing(path) == before


def test_training_end_to_end(tmp_path):
    """One epoch on 40 RGB images in three class folders (val and test of 10: the figures
    callback draws a row of 10 validation points)."""
    path = tmp_path / "images"
    for i in range(40):
        write(path / f"class{i % 3}" / f"{i}.png", smooth_image(i, size=(10, 12)))
    out = tmp_path / "run"
    cfg = compose_train(
        ["data=folder", f"data.path={path}", f"data.root={tmp_path / 'root'}", "data.size=8",
         "data.batch_size=10",
         "data.val_size=10", "data.test_size=10", "model/likelihood=continuous_bernoulli",
         "model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
         "trainer.max_epochs=1", "trainer.accelerator=cpu", *QUIET], out)
    results = train(cfg)
    assert results["data"] == "folder" and results["steps"] == 2
    assert math.isfinite(results["test/elbo"]) and math.isfinite(results["val/elbo"])
    assert (out / "results.json").is_file()


def test_scan_order_labels_and_skipped_files(tmp_path):
    for name in ["b/2.png", "b/1.JPG", "a/x/9.png", "a/0.jpeg", "loose.png", ".hidden/3.png",
                 "b/.4.png", "c/readme.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path)  # a loop: each real folder is read once
    files, labels, classes = folder_module.scan(tmp_path)
    assert [f.as_posix() for f in files] == ["a/0.jpeg", "a/x/9.png", "b/1.JPG", "b/2.png",
                                             "loose.png"]  # sorted by path components
    assert classes == ("a", "b") and labels.tolist() == [0, 0, 1, 1, -1]
