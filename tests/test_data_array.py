"""data=array: .npy and .npz images in every layout and dtype, labels, condition vectors, the
fixed split, nothing ever unpickled, one-line errors for bad files, and training end to end
(also a conditional VAE on condition vectors)."""

import json
import math
import pathlib
import zipfile

import numpy as np
import pytest
import torch
from compose import compose_train

from vae_lightning.args import ArgumentError
from vae_lightning.data import ArrayDataModule, DataError
from vae_lightning.data import array as array_module
from vae_lightning.data.download import DataNotFoundError
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
N = 20


def images(shape, dtype, seed=0) -> np.ndarray:
    """Distinct images: uint8 0..255 or floats in [0, 1] (0 and 1 included)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, np.uint8)
    x = rng.random(shape).astype(dtype)
    x.flat[:2] = 0.0, 1.0
    return x


def save(path: pathlib.Path, **arrays) -> pathlib.Path:
    if path.suffix == ".npy":
        np.save(path, arrays["x"])
    else:
        np.savez_compressed(path, **arrays) if "compressed" in path.name else np.savez(path,
                                                                                      **arrays)
    return path


def served(dm) -> np.ndarray:
    """Every split's images, in index order of the file (the splits are disjoint)."""
    dm.setup()
    parts = {s: dm.splits[s][0].numpy() for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == dm.n
    return parts


@pytest.mark.parametrize("suffix", [".npy", ".npz", "-compressed.npz"])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "float16"])
@pytest.mark.parametrize("stored, layout, shape", [
    ((N, 6, 5), "auto", (1, 6, 5)),  # [N, H, W]
    ((N, 1, 6, 5), "auto", (1, 6, 5)),  # [N, C, H, W]
    ((N, 3, 6, 5), "auto", (3, 6, 5)),
    ((N, 6, 5, 3), "auto", (3, 6, 5)),  # [N, H, W, C]
    ((N, 6, 5, 1), "auto", (1, 6, 5)),
    ((N, 3, 6, 3), "auto", (3, 6, 3)),  # ambiguous: channels-first unless told
    ((N, 3, 6, 3), "nhwc", (3, 3, 6)),
    ((N, 6, 5, 3), "nchw", (6, 5, 3)),  # told: 6 channels
])
def test_layouts_and_dtypes(tmp_path, suffix, dtype, stored, layout, shape):
    x = images(stored, dtype)
    path = save(tmp_path / f"images{suffix}", x=x)
    dm = ArrayDataModule(path=str(path), layout=layout, val_size=4, test_size=3, batch_size=5)
    assert dm.shape == shape and dm.name == "array"
    nchw = x.reshape(N, *shape) if len(stored) == 3 else (
        x.transpose(0, 3, 1, 2) if shape != stored[1:] else x)
    parts = served(dm)
    assert {s: len(p) for s, p in parts.items()} == {"train": 13, "val": 4, "test": 3}
    everything = np.concatenate(list(parts.values())).reshape(N, *shape)
    want = nchw.astype(np.float32) if dtype != "uint8" else nchw
    assert everything.dtype == want.dtype  # uint8 kept; floats served as float32
    assert sorted(map(bytes, everything)) == sorted(map(bytes, want))  # the same images
    batch = next(iter(dm.test_dataloader()))
    inputs, labels = dm.to_inputs(batch)
    assert inputs.dtype == torch.float32 and inputs.shape == (3, *shape)
    pixels = batch[0].reshape(3, *shape).float()
    assert torch.equal(inputs, pixels / 255 if dtype == "uint8" else pixels)  # floats as given
    assert (labels == -1).all()


def test_header_is_read_without_loading(tmp_path, monkeypatch):
    for path in (save(tmp_path / "a.npy", x=images((N, 4, 4, 3), np.uint8)),
                 save(tmp_path / "a.npz", x=images((N, 4, 4, 3), np.uint8))):
        monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("loaded in __init__"))
        assert ArrayDataModule(path=str(path)).shape == (3, 4, 4)
        monkeypatch.undo()


def test_npz_keys_and_labels(tmp_path):
    x, y = images((N, 4, 4), np.uint8), np.arange(N) % 7
    dm = ArrayDataModule(path=str(save(tmp_path / "xy.npz", x=x, y=y)), labels_key="y",
                         val_size=4, test_size=4)
    dm.setup()
    assert dm.key == "x"
    for split in ("train", "val", "test"):
        got_x, got_y = dm.splits[split]
        assert got_y.dtype == torch.int64
        index = {bytes(image): i for i, image in enumerate(x)}
        rows = [index[bytes(image)] for image in got_x.numpy()]
        assert got_y.tolist() == y[rows].tolist()
        assert rows == sorted(rows)  # each split in file order
    dm = ArrayDataModule(path=str(save(tmp_path / "xy.npz", x=x, y=y)))
    dm.setup("test")
    assert (dm.splits["test"][1] == -1).all()  # no labels_key: no labels
    only = ArrayDataModule(path=str(save(tmp_path / "only.npz", pictures=x)), val_size=2,
                           test_size=2)
    assert only.key == "pictures"
    named = ArrayDataModule(path=str(save(tmp_path / "two.npz", a=x, b=x[:, :2])), key="b")
    assert named.shape == (1, 2, 4)
    both = ArrayDataModule(path=str(save(tmp_path / "lab.npz", images=x, labels=y)),
                           labels_key="labels")
    assert both.key == "images"


@pytest.mark.parametrize("arrays, kwargs, words", [
    ({"a": np.zeros((4, 2, 2), np.uint8), "b": np.zeros((4, 2, 2), np.uint8)}, {},
     "key=null, but data.path=.* holds 2 arrays \\(a, b\\) and none named x"),
    ({"x": np.zeros((4, 2, 2), np.uint8)}, {"key": "images"},
     "key='images' is not an array of data.path=.*: expected one of x"),
    ({"x": np.zeros((4, 2, 2), np.uint8)}, {"labels_key": "y"},
     "labels_key='y' is not an array of data.path"),
    ({"x": np.zeros((4, 2, 2), np.uint8), "y": np.zeros(3, np.int64)}, {"labels_key": "y"},
     r"\(data.labels_key='y'\) has shape \[3\]: expected one label per image, \[4\]"),
    ({"x": np.zeros((4, 2, 2), np.uint8), "y": np.zeros(4, np.float32)}, {"labels_key": "y"},
     r"\(data.labels_key='y'\) has dtype float32: expected integer labels"),
    ({"x": np.zeros((4, 2, 2), np.uint8)}, {"labels_key": "x"},
     "labels_key='x' is the only array of data.path=.*: expected the images in another array"),
    ({"x": np.zeros((4, 2, 2), np.uint8), "y": np.zeros(4, np.int64)},
     {"key": "y", "labels_key": "y"}, "labels_key='y' is also the images' key"),
])
def test_npz_key_errors(tmp_path, arrays, kwargs, words):
    path = save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=words) as err:
        ArrayDataModule(path=str(path), **kwargs)
    assert len(str(err.value).splitlines()) == 1


class Exploit:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickled_object_array_is_refused_not_unpickled(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    objects = np.empty((N, 2, 2), dtype=object)
    objects[...] = Exploit(str(marker))
    path = tmp_path / f"objects{suffix}"
    if suffix == ".npy":
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, x=objects)
    with pytest.raises(DataError, match="an array of Python objects, which is never loaded"):
        ArrayDataModule(path=str(path))
    assert not marker.exists()  # refused, never unpickled
    loaded = np.load(path, allow_pickle=True)  # whereas unpickling it runs its code:
    assert (loaded if suffix == ".npy" else loaded["x"]).shape == (N, 2, 2)
    assert marker.exists()


@pytest.mark.parametrize("x, words", [
    (np.full((N, 4, 4), 1.5, np.float32), r"image 0 \(of 20 such\) holds a value above 1: "
     r"expected float pixels in \[0, 1\]"),
    (np.concatenate([np.zeros((N - 1, 4, 4)), np.full((1, 4, 4), -0.25)]),
     r"image 19 \(of 1 such\) holds a value below 0"),
    (np.concatenate([np.zeros((N - 1, 4, 4)), np.full((1, 4, 4), np.nan)]),
     r"image 19 \(of 1 such\) holds a value that is not finite: expected float pixels in "
     r"\[0, 1\] \(and finite\)"),
    (np.full((N, 4, 4), np.inf, np.float32), "holds a value that is not finite"),
])
def test_float_values_outside_unit_interval(tmp_path, x, words):
    dm = ArrayDataModule(path=str(save(tmp_path / "f.npy", x=x)), val_size=1, test_size=1)
    with pytest.raises(DataError, match=words) as err:
        dm.setup()
    assert "f.npy" in str(err.value)


@pytest.mark.parametrize("x, words", [
    (np.zeros((N, 4, 4), np.int16), "has dtype int16: expected uint8 .* or float"),
    # Feature vectors of another dtype: not spoken of as images to divide by 255 (newcomer
    # seven); integer ones are counts (tests/test_counts.py).
    (np.zeros((N, 200), bool), r"has dtype bool: expected float feature vectors \[N, D\] "
                               r".*, integer ones \(counts, .*poisson or negative_binomial\)"),
    (np.zeros((N, 4, 4), bool), "has dtype bool: expected uint8"),
    (np.zeros((N, 4, 4), np.complex64), "has dtype complex64"),
    (np.zeros(N, np.uint8), r"has shape \[20\]: expected images \[N, H, W\].* or feature "
                            r"vectors \[N, D\]"),
    (np.zeros((N, 0), np.float32), r"has shape \[20, 0\]"),
    (np.zeros((N, 2, 2, 2, 2), np.uint8), r"has shape \[20, 2, 2, 2, 2\]"),
    (np.zeros((N, 0, 4), np.uint8), r"has shape \[20, 0, 4\]"),
    (np.zeros((0, 4, 4), np.uint8), r"holds no images \(shape \[0, 4, 4\]\)"),
    (np.zeros((N, 4, 4), [("a", np.uint8), ("b", np.float32)]), "has dtype"),
])
def test_bad_arrays(tmp_path, x, words):
    for path in (save(tmp_path / "bad.npy", x=x), save(tmp_path / "bad.npz", x=x)):
        with pytest.raises(DataError, match=words) as err:
            ArrayDataModule(path=str(path))
        assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_bad_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        ArrayDataModule(path=str(tmp_path / "missing.npy"))
    text = tmp_path / "images.npy"
    text.write_text("hello")
    with pytest.raises(DataError, match="is neither a .npy nor a .npz file"):
        ArrayDataModule(path=str(text))
    bad_header = tmp_path / "header.npy"
    bad_header.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': nonsense}")
    with pytest.raises(DataError, match="is not a readable .npy array"):
        ArrayDataModule(path=str(bad_header))
    whole = save(tmp_path / "whole.npy", x=images((N, 8, 8), np.uint8))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(whole.read_bytes()[:-100])  # the header is intact: the data is short
    with pytest.raises(DataError, match=r"declares uint8 \[20, 8, 8\] \(1,280 bytes of data\), "
                       "but holds at most 1,180: the file is truncated or corrupt") as err:
        ArrayDataModule(path=str(cut))
    assert str(cut) in str(err.value)
    # Cut after the header was read: refused when the data is read, by the same check.
    cut.write_bytes(whole.read_bytes())
    dm = ArrayDataModule(path=str(cut))
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(DataError, match="but holds at most 1,180"):
        dm.setup()
    zipped = save(tmp_path / "whole.npz", x=images((N, 8, 8), np.uint8))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(zipped.read_bytes()[:200])
    with pytest.raises(DataError, match="is not a readable .npz file") as err:
        ArrayDataModule(path=str(broken))
    assert str(broken) in str(err.value)
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(DataError, match=r"holds no arrays \(none\)"):
        ArrayDataModule(path=str(tmp_path / "empty.npz"))
    for key in ("key", "labels_key"):
        with pytest.raises(DataError, match=f"{key}='x' names an array in a .npz file"):
            ArrayDataModule(path=str(whole), **{key: "x"})


def test_split_is_fixed_across_seeds_and_too_few_images(tmp_path):
    path = save(tmp_path / "x.npy", x=images((N, 4, 4), np.uint8))

    def split(seed, stage, name):
        dm = ArrayDataModule(path=str(path), seed=seed)
        dm.setup(stage)
        return dm.splits[name][0]

    assert torch.equal(split(0, None, "val"), split(3, "validate", "val"))
    assert torch.equal(split(0, None, "test"), split(4, "test", "test"))
    assert len(split(0, "fit", "train")) == 16  # 10% of 20 for val and test each
    few = save(tmp_path / "few.npy", x=images((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="holds 2 examples: too few"):
        ArrayDataModule(path=str(few)).setup()
    one = save(tmp_path / "one.npy", x=images((1, 4, 4), np.uint8))
    with pytest.raises(DataError, match="holds 1 example: too few"):
        ArrayDataModule(path=str(one)).setup()


def test_float_binarization_draws_bernoulli_of_the_value(tmp_path):
    values = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    x = np.tile(values, (4000, 1)).reshape(4000, 1, 2, 2)
    dm = ArrayDataModule(path=str(save(tmp_path / "p.npy", x=x)), binarize="dynamic",
                         val_size=1, test_size=1, batch_size=4000)
    dm.setup("fit")
    drawn, _ = dm.to_inputs(next(iter(dm.train_dataloader())))
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    mean = drawn.flatten(1).mean(0).double()
    assert torch.allclose(mean, torch.from_numpy(values).double(), atol=0.03)
    assert mean[0] == 0 and mean[3] == 1
    static = ArrayDataModule(path=str(save(tmp_path / "p.npy", x=x)), binarize="static",
                             val_size=1, test_size=1)
    static.setup("test")
    assert static.splits["test"][0].dtype == torch.bool


def test_val_size_zero_trains_on_everything_but_the_test_images(tmp_path):
    """val_size=0: no validation split; all images but the test ones train."""
    dm = ArrayDataModule(path=str(save(tmp_path / "a.npy", x=images((N, 4, 4), np.uint8))),
                         val_size=0, test_size=2)
    dm.setup()
    sizes = {s: len(dm.splits[s][0]) for s in ("train", "val", "test")}
    assert sizes == {"train": N - 2, "val": 0, "test": 2}


@pytest.mark.parametrize("kwargs, word", [
    ({"layout": "chw"}, "layout='chw' is not allowed: expected one of auto, nchw, nhwc"),
    ({"val_size": -1}, "val_size=-1 is not allowed"),
    ({"test_size": 1.0}, "test_size=1.0 is not allowed"),
    ({"key": 3}, "key=3 is not allowed"),
])
def test_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ArgumentError, match=word):
        ArrayDataModule(path=str(tmp_path / "x.npy"), **kwargs)


def test_image_shape_rule():
    for shape, layout in [((5, 28, 28, 1), "nhwc"), ((5, 32, 32, 3), "nhwc"),
                          ((5, 3, 32, 32), "nchw"), ((5, 1, 28, 28), "nchw"),
                          ((5, 3, 8, 3), "nchw"), ((5, 4, 8, 8), "nchw"), ((5, 8, 8), "nhw")]:
        assert array_module.resolve_layout(shape, "auto", "x") == layout


def test_config_and_training_end_to_end(tmp_path):
    path = save(tmp_path / "data.npz", x=images((40, 8, 8), np.float32),
                y=np.arange(40) % 4)
    cfg = compose_train(["data=array", f"data.path={path}"], tmp_path / "check")
    assert cfg.model.decoder.likelihood._target_ == "vae_lightning.likelihoods.ContinuousBernoulli"
    assert build_run(cfg).datamodule.shape == (1, 8, 8)
    out = tmp_path / "run"
    results = train(compose_train(
        ["data=array", f"data.path={path}", "data.labels_key=y", "data.batch_size=10",
         "data.val_size=10", "data.test_size=10", "model.latent=2",
         "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
         "trainer.max_epochs=1", "trainer.accelerator=cpu", *QUIET], out))
    assert results["data"] == "array" and results["steps"] == 2
    assert math.isfinite(results["test/elbo"]) and (out / "results.json").is_file()


def conditioned_images(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """8 x 8 images whose left and right halves are sigmoid(2 c_0), sigmoid(2 c_1) (plus a little
    noise, clipped to [0, 1]) for the condition c ~ N(0, I_2) of each: ``x`` and ``c``."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n, 2)).astype(np.float32)
    x = np.empty((n, 8, 8), np.float32)
    x[:, :, :4] = (1 / (1 + np.exp(-2 * c[:, 0])))[:, None, None]
    x[:, :, 4:] = (1 / (1 + np.exp(-2 * c[:, 1])))[:, None, None]
    return {"x": np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1).astype(np.float32),
            "c": c}


def test_a_condition_array_is_served_as_float_vectors_beside_its_images(tmp_path):
    arrays = conditioned_images(20)
    dm = ArrayDataModule(path=str(save(tmp_path / "xc.npz", **arrays)), condition="c",
                         val_size=4, test_size=4)
    assert dm.condition_size == 2
    dm.setup()
    index = {bytes(image): i for i, image in enumerate(arrays["x"])}
    for split in ("train", "val", "test"):
        x, c = dm.splits[split]
        assert c.dtype == torch.float32 and c.shape == (len(x), 2)
        rows = [index[bytes(image)] for image in x.numpy()]
        assert torch.equal(c, torch.from_numpy(arrays["c"][rows]))  # each image's own
        assert torch.equal(dm.evaluation_labels(split), c)
    assert dm.to_inputs(next(iter(dm.test_dataloader())))[1].dtype == torch.float32
    one = ArrayDataModule(path=str(save(tmp_path / "x1.npz", x=arrays["x"], t=np.arange(20))),
                          condition="t", val_size=4, test_size=4)  # [N] integers: D = 1
    one.setup("test")
    assert one.splits["test"][1].shape == (4, 1) and one.splits["test"][1].dtype == torch.float32


@pytest.mark.parametrize("condition, kwargs, words", [
    (None, {"condition": "pose"},
     "condition='pose' is not an array of data.path=.*: expected one of"),
    (np.zeros(N, bool), {}, r"\(data.condition='c'\) has dtype bool: expected numbers"),
    (np.array(["a"] * N), {}, "has dtype <U1: expected numbers"),
    (np.zeros((N - 1, 2)), {}, r"\(data.condition='c'\) has shape \[19, 2\]: expected one "
                               r"condition vector per image, \[20, D\]"),
    (np.zeros((N, 2, 2)), {}, r"has shape \[20, 2, 2\]"),
    (np.zeros((N, 0)), {}, r"has shape \[20, 0\]"),
    (np.zeros(N, np.int64), {"labels_key": "c"}, "labels_key='c' and data.condition='c'"),
])
def test_a_bad_condition_array_is_refused_in_one_line(tmp_path, condition, kwargs, words):
    arrays = {"x": np.zeros((N, 2, 2), np.uint8)}
    if condition is not None:
        arrays["c"] = condition
    with pytest.raises(DataError, match=words) as err:
        ArrayDataModule(path=str(save(tmp_path / "bad.npz", **arrays)),
                        **{"condition": "c", **kwargs})
    assert len(str(err.value).splitlines()) == 1


def test_a_condition_that_is_not_finite_is_refused_when_read(tmp_path):
    for value, name in ((np.nan, "float32"), (1e300, "float64")):  # 1e300: inf as float32
        c = np.zeros((N, 2), name)
        c[7, 1] = value
        dm = ArrayDataModule(path=str(save(tmp_path / "c.npz", x=np.zeros((N, 2, 2), np.uint8),
                                           c=c)), condition="c")
        with pytest.raises(DataError, match=r"\(data.condition='c'\): the condition of image 7 "
                                            r"\(of 1 such\) holds a value that is not finite"):
            dm.setup()
    with pytest.raises(DataError, match="condition='c' names an array in a .npz file"):
        ArrayDataModule(path=str(save(tmp_path / "x.npy", x=np.zeros((N, 2, 2)))), condition="c")


def test_a_conditional_vae_learns_from_a_condition_array(tmp_path):
    """model=cvae on data.condition, 80 steps: the loss falls; the decoder's image follows the
    condition (each half brighter where its c is larger), the bound with each image's own
    condition is far above the bound with another's; vae-eval bounds log p(x|y) given the
    vector and vae-sample draws for a vector given as a list; a mismatched model is refused."""
    import json

    from omegaconf import OmegaConf

    from vae_lightning.config import instantiate_node
    from vae_lightning.errors import ConfigError
    from vae_lightning.module import VAE

    arrays = conditioned_images()
    path = save(tmp_path / "xc.npz", **arrays)
    common = ["data=array", f"data.path={path}", "data.condition=c", "data.batch_size=20",
              "model.latent=1", "trainer.accelerator=cpu", "logger=none",
              "callbacks.bound_curve=null", "callbacks.figures.n_points=0", *QUIET]
    small = ["model.encoder.net.hidden=[32]", "model.decoder.net.hidden=[32]"]
    for overrides, words in ((["model=cvae", "model.classes=3", *small],
                              "model.classes=3, and data.condition='c' holds vectors of 2"),
                             (["model=vae"], "the model is not conditional"),
                             (["model=m2", "model.classes=2", *small],
                              "sums over class labels")):
        with pytest.raises(ConfigError, match=words):
            train(compose_train([*common, *overrides], tmp_path / "refused"))
    torch.manual_seed(0)
    results = train(compose_train([*common, "model=cvae", "model.classes=2", *small,
                                   "model.optimizer.lr=3e-3", "trainer.max_epochs=10"],
                                  tmp_path / "run"))
    assert results["steps"] == 80 and results["train/elbo"] > results["initial/val_elbo"] + 10
    assert results["bound_of"].startswith("log p(x|y), a conditional likelihood of each image "
                                          "given its condition vector y")  # as eval.json's
    model = VAE.load_from_checkpoint(results["checkpoint"])
    z = torch.zeros(1, 1)
    left, right = (model.images(z, y=torch.tensor(c))[0, 0] for c in ([2.0, -2.0], [-2.0, 2.0]))
    assert left[:, :4].mean() > right[:, :4].mean() + 0.2  # the halves follow c_0 ...
    assert right[:, 4:].mean() > left[:, 4:].mean() + 0.2  # ... and c_1
    x, c = torch.from_numpy(arrays["x"]).unsqueeze(1), torch.from_numpy(arrays["c"])
    with torch.no_grad():
        assert model.bound(x, c).elbo.mean() > model.bound(x, c.roll(1, 0)).elbo.mean() + 10
    evaluation = OmegaConf.create({"_target_": "vae_lightning.evaluate.Evaluation", "k": 10,
                                   "device": "cpu", "max_hours": None, "data_path": str(path)})
    instantiate_node(evaluation, "eval")(results["checkpoint"], 0, str(tmp_path / "eval"))
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["bound_of"].startswith("log p(x|y), a conditional likelihood of each image "
                                        "given its condition vector y")
    from compose import sample_config

    args = [f"ckpt_path={results['checkpoint']}", "n=4", "device=cpu"]
    out = sample_config([*args, "y=[2.0,-2.0]", f"output_dir={tmp_path / 's'}"])()
    samples = np.load(out / "samples.npy")
    assert (samples[:, 0, :, :4].mean() > samples[:, 0, :, 4:].mean() + 0.2)
    # A model of condition vectors refuses a class: the message offered one (hostile round
    # twenty-one's finding), which the next command then refused.
    with pytest.raises(ConfigError, match=r"y=\[1.0, 2.0, 3.0\]: a condition vector of this "
                                          r"model is 2 finite numbers \(.*\); give as many\.$"):
        sample_config([*args, "y=[1,2,3]", f"output_dir={tmp_path / 't'}"])()


def _features(path, n=400, d=3, seed=0, **extra):
    """Feature vectors x [n, d] and standard deviations s [n, d] (the last point's all 0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) * 5
    s = rng.uniform(0.5, 2.0, (n, d)).astype(np.float32)
    s[-1] = 0.0
    return save(path, x=x, s=s, **extra), x, s


def test_std_key_draws_each_training_minibatch_afresh_from_the_gaussian(tmp_path):
    """std_key: the training batches are x + s * eps with eps ~ N(0, 1), drawn again at every
    minibatch (another epoch: other draws), the same for the same seed (a resumed run draws the
    same) and without moving the global random state; a point with s = 0 is its mean; the
    validation and test splits are the means."""
    path, x, s = _features(tmp_path / "f.npz")
    dm = ArrayDataModule(path=str(path), std_key="s", val_size=0.1, test_size=0.1,
                         batch_size=32)
    dm.setup("fit")
    dm.setup("test")
    mean, std = dm.splits["train"][0], dm.train_std
    assert std.shape == mean.shape and torch.equal(dm.splits["val"][0], dm.splits["val"][0])
    assert {tuple(r) for r in dm.splits["val"][0].tolist()} <= {tuple(r) for r in x.tolist()}
    state = torch.get_rng_state()
    points = dm.training_points(mean)
    idx = torch.randperm(len(mean), generator=torch.Generator().manual_seed(1))
    residuals, scales = [], []
    for epoch in range(20):  # a permutation per epoch, as the sampler draws them
        order = torch.randperm(len(mean), generator=torch.Generator().manual_seed(epoch))
        for part in order.split(32):
            residuals.append(points.index_select(0, part) - mean[part])
            scales.append(std[part])
    assert torch.equal(torch.get_rng_state(), state)
    first, again = points.index_select(0, idx[:32]), points.index_select(0, idx[:32])
    assert torch.equal(first, again)  # the same minibatch: the same draw
    other = ArrayDataModule(path=str(path), std_key="s", val_size=0.1, test_size=0.1, seed=1)
    other.setup("fit")
    assert not torch.equal(other.training_points(mean).index_select(0, idx[:32]), first)
    residual, scale = torch.cat(residuals), torch.cat(scales)
    assert (residual[scale == 0] == 0).all()
    eps = residual[scale > 0] / scale[scale > 0]  # 20 epochs of 320 points x 3: 19,200 draws
    assert abs(eps.mean().item()) < 0.03 and abs(eps.std().item() - 1) < 0.03
    zero = (std == 0).all(1).nonzero().flatten()
    if len(zero):  # the point with s = 0, when it is in the training split
        assert torch.equal(points.index_select(0, zero), mean[zero])
    batch, _ = next(iter(dm.train_dataloader()))
    assert not any(torch.equal(row, m) for row in batch for m in mean)  # drawn, not the means
    val, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(val, dm.splits["val"][0][:len(val)])


def test_std_key_draws_the_labelled_points_of_a_semi_supervised_minibatch_too(tmp_path):
    path, x, s = _features(tmp_path / "f.npz", labels=np.arange(400) % 2)
    dm = ArrayDataModule(path=str(path), std_key="s", labels_key="labels", labelled=4,
                         labelled_batch=6, batch_size=10, val_size=0.1, test_size=0.1)
    dm.setup("fit")
    batch, y = next(iter(dm.train_dataloader()))
    assert len(batch) == 16 and (y[10:] >= 0).all()
    means = {tuple(row) for row in dm.splits["train"][0].tolist()}
    assert not {tuple(row) for row in batch[10:].tolist()} & means


@pytest.mark.parametrize("arrays, kwargs, words", [
    ({"x": np.zeros((N, 3), np.float32), "s": np.ones((N, 2), np.float32)}, {},
     r"\(data.std_key='s'\) has shape \[20, 2\]: expected a standard deviation per value of "
     r"the feature vectors, \[20, 3\]"),
    ({"x": np.zeros((N, 3), np.float32), "s": np.ones((N, 3), np.int64)}, {},
     r"\(data.std_key='s'\) has dtype int64: expected float standard deviations"),
    ({"x": np.zeros((N, 3), np.float32)}, {},
     r"data.std_key='s' is not an array of data.path=.*: expected one of x"),
    ({"x": np.zeros((N, 4, 4), np.uint8), "s": np.ones((N, 4, 4), np.float32)}, {},
     r"data.std_key='s': standard deviations draw float feature vectors afresh, and .* holds "
     r"uint8 \[20, 4, 4\]: expected float feature vectors"),
    # The means (or the test split) as their own standard deviations: taken silently before,
    # where every value was >= 0.
    ({"x": np.ones((N, 3), np.float32), "s": np.ones((N, 3), np.float32)}, {"key": "s"},
     r"data.std_key='s' is also the images' key: expected the array of the standard deviations"),
    ({"x": np.ones((N, 3), np.float32), "s": np.ones((N, 3), np.float32)}, {"test_key": "s"},
     r"data.std_key='s' is also the test images' key"),
])
def test_a_bad_std_key_is_refused_in_one_line(tmp_path, arrays, kwargs, words):
    with pytest.raises(DataError, match=words) as err:
        ArrayDataModule(path=str(save(tmp_path / "bad.npz", **arrays)), std_key="s", **kwargs)
    assert len(str(err.value).splitlines()) == 1


def test_standard_deviations_that_are_negative_or_not_finite_are_refused_when_read(tmp_path):
    for value in (-1.0, np.nan, np.inf):
        s = np.ones((N, 3), np.float32)
        s[7, 1] = value
        dm = ArrayDataModule(path=str(save(tmp_path / "s.npz", x=np.zeros((N, 3), np.float32),
                                           s=s)), std_key="s", test_size=0.1)
        with pytest.raises(DataError, match=r"\(data.std_key='s'\): the standard deviations of "
                                            r"vector 7 \(of 1 such\) hold a value that is "
                                            "negative or not finite"):
            dm.setup("fit")
    with pytest.raises(DataError, match="std_key='s' names an array in a .npz file"):
        ArrayDataModule(path=str(save(tmp_path / "x.npy", x=np.zeros((N, 3), np.float32))),
                        std_key="s")


def test_a_resume_with_other_standard_deviations_is_refused(tmp_path, one_thread):
    """The training split's standard deviations are part of the data's identity: a run
    continued on the same features with other s is refused, naming them."""
    from vae_lightning.errors import CheckpointError

    path, x, s = _features(tmp_path / "f.npz", n=200)
    common = [f"data.path={path}", "data=array", "data.key=x", "data.std_key=s",
              "model/likelihood=gaussian", "model.decoder.likelihood.mean_activation=identity",
              "model.latent=2", "model.encoder.net.hidden=[8]",
              "model.decoder.net.hidden=[8]", "logger=none", "callbacks.figures=null",
              "callbacks.bound_curve=null", *QUIET]
    train(compose_train([*common, "trainer.max_epochs=1"], tmp_path / "run"))
    save(path, x=x, s=s * 2)
    with pytest.raises(CheckpointError, match=r"standard deviations \(data.std_key\)"):
        train(compose_train([*common, "trainer.max_epochs=2",
                             f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"],
                            tmp_path / "run"))


def test_a_resume_without_the_standard_deviations_is_refused(tmp_path, one_thread):
    """A run trained on draws from N(x, s^2) and continued with data.std_key=null would train on
    the means alone: refused, naming them (before, only other or added s were found)."""
    from vae_lightning.errors import CheckpointError

    path, _, _ = _features(tmp_path / "f.npz", n=200)
    common = [f"data.path={path}", "data=array", "data.key=x", "model/likelihood=gaussian",
              "model.decoder.likelihood.mean_activation=identity", "model.latent=2",
              "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]", "logger=none",
              "callbacks.figures=null", "callbacks.bound_curve=null", *QUIET]
    train(compose_train([*common, "data.std_key=s", "trainer.max_epochs=1"], tmp_path / "run"))
    with pytest.raises(CheckpointError, match=r"standard deviations \(data.std_key\) None \(the "
                                              r"checkpoint's: \{'key': 's'"):
        train(compose_train([*common, "data.std_key=null", "trainer.max_epochs=2",
                             f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"],
                            tmp_path / "run"))


@pytest.mark.parametrize("key, then, now", [
    ("labelled", 20, 40), ("labelled", 20, None), ("labelled", None, 20),
    ("train_std", {"key": "s", "sha256": "ab"}, None),
])
def test_how_the_training_split_is_drawn_is_compared_both_ways_where_it_is_read(key, then, now):
    """data.labelled (which labels a semi-supervised run sees) and data.std_key are part of the
    data's identity: a resume that changes or drops either is told (before, a resume with
    data.labelled=40 after 20, or without std_key, went on silently); an evaluation that reads
    another split only is not."""
    from vae_lightning.checkpoints import DATA_KEY, data_differences

    base = {"data": "array", "shape": [1, 1, 2], "scale": 255.0, "binarize": "none",
            "splits": {"train": {"size": 10, "sha256": "x"}, "test": {"size": 5, "sha256": "y"}}}
    saved = {**base, **({key: then} if then is not None else {})}
    identity = {**base, **({key: now} if now is not None else {})}
    found = data_differences({DATA_KEY: saved}, identity)
    assert len(found) == 1 and f"(the checkpoint's: {then!r})" in found[0]
    assert f"(data.{'std_key' if key == 'train_std' else key})" in found[0]
    test_only = {**identity, "splits": {"test": base["splits"]["test"]}}
    test_only.pop("train_std", None)
    assert data_differences({DATA_KEY: saved}, {**test_only, key: then} if key == "labelled"
                            else test_only) == []


def test_a_resume_whose_seed_chooses_other_labelled_points_is_told(tmp_path):
    """data.labelled keeps the labels of points chosen by the seed: a resume with another seed
    showed the run other labels (20 more labelled points, silently); the chosen points are
    part of the data's identity. The same seed's identity is the checkpoint's, and a
    checkpoint written before the points were recorded is not refused for lacking them."""
    from vae_lightning.checkpoints import DATA_KEY, data_differences

    path, _, _ = _features(tmp_path / "f.npz", labels=np.arange(400) % 2)

    def identity(seed):
        dm = ArrayDataModule(path=str(path), labels_key="labels", labelled=4, seed=seed,
                             val_size=0.1, test_size=0.1)
        dm.setup("fit")
        return dm.identity()

    saved = identity(0)
    assert data_differences({DATA_KEY: saved}, identity(0)) == []
    found = data_differences({DATA_KEY: saved}, identity(1))
    assert len(found) == 1 and "the labelled training images are other points" in found[0]
    older = {key: value for key, value in saved.items() if key != "labelled_points"}
    assert data_differences({DATA_KEY: older}, identity(1)) == []


def test_images_of_channels_no_picture_shows_train_and_get_no_pictures(tmp_path):
    """data=array images [N, 2, H, W] trained, then the figures' samples (matplotlib: 'Invalid
    shape (80, 80, 2) for image data') ended the run with a traceback after training, before
    the test; vae-sample's grid likewise. Now they are drawn as feature vectors are: the array
    only, and traverse=true is refused naming the channels."""
    import numpy as np
    from compose import compose_train, sample_config

    from vae_lightning.errors import ConfigError
    from vae_lightning.train import train

    x = np.random.default_rng(0).integers(0, 256, (40, 2, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "two.npy", x)
    run = tmp_path / "run"
    results = train(compose_train(["data=array", f"data.path={tmp_path / 'two.npy'}",
                                   "model.latent=2", "model.encoder.net.hidden=[8]",
                                   "model.decoder.net.hidden=[8]", "trainer.max_steps=2",
                                   "logger=none", "trainer.enable_progress_bar=false",
                                   "trainer.enable_model_summary=false"], run))
    assert results["status"] == "completed"
    assert sorted(p.stem for p in (run / "figures").glob("*.png")) == ["curves", "latents"]
    checkpoint = run / "checkpoints" / "last.ckpt"
    out = sample_config([f"ckpt_path={checkpoint}", "n=3", "device=cpu"])()
    assert np.load(out / "samples.npy").shape == (3, 2, 8, 8)
    assert not (out / "samples.png").exists()
    with pytest.raises(ConfigError, match=r"traverse=true: the images have 2 channels"):
        sample_config([f"ckpt_path={checkpoint}", "n=3", "device=cpu", "traverse=true",
                       f"output_dir={tmp_path / 't'}"])()


def _trained_and_evaluated(path, train_args, tmp_path, monkeypatch, capsys):
    """vae-train for 2 steps on the array file ``path`` with ``train_args`` (small networks),
    then vae-eval (k = 2) of its last.ckpt: vae-eval's output and the run's directory."""
    from test_hostile import no_traceback, run

    from vae_lightning import cli

    run_dir = tmp_path / "run"
    trained = run(cli.train, ["data=array", f"data.path={path}", "data.batch_size=20",
                              *train_args, "model.latent=1", "model.encoder.net.hidden=[8]",
                              "model.decoder.net.hidden=[8]", "trainer.max_steps=2",
                              "logger=none", "callbacks.bound_curve=null",
                              "callbacks.figures=null", f"hydra.run.dir={run_dir}", *QUIET],
                  monkeypatch, capsys, tmp_path)
    assert trained.code == 0, trained.err[-3000:]
    evaluated = run(cli.evaluate, [f"ckpt_path={run_dir}/checkpoints/last.ckpt", "eval.k=2",
                                   "eval.device=cpu", f"eval.data_path={path}"],
                    monkeypatch, capsys, tmp_path)
    no_traceback(evaluated)
    assert evaluated.code == 0, evaluated.err[-3000:]
    return evaluated, run_dir


def test_vae_eval_of_a_conditional_vae_names_the_conditional_kl(tmp_path, monkeypatch, capsys):
    """A conditional VAE's vae-eval line of the mean KL is of q(z|x,y) to p(z|y), as its bounds
    are of log p(x|y): it said KL(q(z|x) || p(z)) beside "bounds on log p(x|y)"."""
    path = save(tmp_path / "xc.npz", **conditioned_images(60))
    evaluated, _ = _trained_and_evaluated(
        path, ["data.condition=c", "model=cvae", "model.classes=2"], tmp_path, monkeypatch,
        capsys)
    assert "test KL(q(z|x,y) || p(z|y)) " in evaluated.out, evaluated.out
    assert "bounds on log p(x|y)" in evaluated.out


def test_vae_eval_s_summary_names_the_model_s_training_length_and_its_error(
        tmp_path, monkeypatch, capsys):
    """The line a reader copies says which model (its samples seen: a short run's number is
    not a converged one's) and what its +- is (newcomer walkthrough nine)."""
    path = save(tmp_path / "xc.npz", **conditioned_images(60))
    evaluated, run_dir = _trained_and_evaluated(
        path, ["data.condition=c", "model=cvae", "model.classes=2"], tmp_path, monkeypatch,
        capsys)
    seen = json.loads((run_dir / "eval.json").read_text())["train_samples_seen"]
    assert seen > 0
    assert (f"+- the standard error over the points; the model after {seen:,} training "
            "samples;") in evaluated.out, evaluated.out


def test_vae_eval_of_m2_writes_its_bound_and_proposal_to_eval_json(tmp_path, monkeypatch, capsys):
    """End to end, M2 trained on a labelled array file: vae-eval's eval.json says its bounds are
    of log p(x) with y enumerated, its ELBO U(x), and its proposal q(z|x, y) per class, and the
    classification error of q(y|x) is written beside them."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    x = np.clip(y[:, None, None] * 0.8 + 0.1 + 0.05 * rng.standard_normal((60, 8, 8)), 0, 1)
    path = save(tmp_path / "xy.npz", x=x.astype(np.float32), y=y)
    _, run_dir = _trained_and_evaluated(
        path, ["data.labels_key=y", "data.labelled=20", "data.labelled_batch=4", "model=m2",
               "model.classes=2"], tmp_path, monkeypatch, capsys)
    results = json.loads((run_dir / "eval.json").read_text())
    assert results["bound_of"].startswith("log p(x), y enumerated over its 2 classes")
    assert "U(x)" in results["bound_of"] and "U(x)" in results["proposal"]
    assert results["proposal"].startswith("q(z|x, y) for each class y")
    assert 0 <= results["classification_error"] <= 1


def test_a_relative_recorded_data_path_missing_from_elsewhere_says_how_to_name_it(
        tmp_path, monkeypatch, capsys):
    """A run trained with a relative data.path, evaluated from another directory: the refusal
    (exit 2, one line) says the path came from the run's record, relative to where the command
    runs, and how to name the file (it said only that the path does not exist)."""
    from test_hostile import no_traceback, run

    from vae_lightning import cli

    save(tmp_path / "xc.npz", **conditioned_images(40))
    run_dir = tmp_path / "run"
    trained = run(cli.train, ["data=array", "data.path=xc.npz", "data.batch_size=20",
                              "model/likelihood=gaussian", "model.latent=1",
                              "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]",
                              "trainer.max_steps=1", "logger=none", "callbacks.bound_curve=null",
                              "callbacks.figures=null", f"hydra.run.dir={run_dir}", *QUIET],
                  monkeypatch, capsys, tmp_path)
    assert trained.code == 0, trained.err[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = run(cli.evaluate, [f"ckpt_path={run_dir}/checkpoints/last.ckpt", "eval.k=1",
                                   "eval.device=cpu"], monkeypatch, capsys, elsewhere)
    no_traceback(evaluated)
    assert evaluated.code == 2
    lines = [line for line in evaluated.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "The run's record gives data.path='xc.npz', a relative path" \
        in lines[0] and f"({elsewhere})" in lines[0] and "eval.data_path=..." in lines[0], lines
    again = run(cli.evaluate, [f"ckpt_path={run_dir}/checkpoints/last.ckpt", "eval.k=1",
                               "eval.device=cpu", f"eval.data_path={tmp_path / 'xc.npz'}"],
                monkeypatch, capsys, elsewhere)
    assert again.code == 0, again.err[-3000:]
