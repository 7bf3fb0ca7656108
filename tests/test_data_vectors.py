"""data=array with feature vectors [N, D] (another model's posterior means, as Kingma et al.
2014's M1+M2 trains M2 on M1's) and a test split given apart (data.test_key): the vectors are
served as [B, 1, 1, D] with their real values unchanged; the given test split is the test array
itself, in order, with its labels, and validation is held out of the rest; every inconsistent
option is refused with its key named; a likelihood without a density on real numbers is refused
before training; and M2 trained on vectors with few labels classifies held-out points."""

import compose
import numpy as np
import pytest
import torch
from compose import compose_train

from vae_lightning.data import ArrayDataModule, DataError
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import Evaluation
from vae_lightning.train import build_run, train


def clusters(n: int, d: int = 6, classes: int = 3, seed: int = 0, spread: float = 0.3):
    """Points around ``classes`` well-separated centres in R^d (real values of both signs), and
    their classes."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(classes, d) - 1.0
    y = rng.integers(0, classes, n)
    return (centres[y] + spread * rng.standard_normal((n, d))).astype(np.float32), y


def test_vectors_are_served_as_one_row_images_with_their_values(tmp_path):
    x, _ = clusters(40)
    np.save(tmp_path / "v.npy", x)
    dm = ArrayDataModule(path=str(tmp_path / "v.npy"), val_size=5, test_size=5)
    assert dm.shape == (1, 1, 6) and dm.real_values and (x < 0).any()
    dm.setup()
    served = torch.cat([dm.splits[s][0] for s in ("train", "val", "test")])
    assert served.shape == (40, 6)
    # every vector served once, exactly (float32 in, float32 out)
    assert sorted(map(tuple, served.numpy())) == sorted(map(tuple, x))
    batch = dm.to_inputs((dm.splits["train"][0][:4], dm.splits["train"][1][:4]))[0]
    assert batch.shape == (4, 1, 1, 6) and torch.equal(batch.flatten(1), dm.splits["train"][0][:4])


def test_uint8_vectors_are_pixels(tmp_path):
    np.save(tmp_path / "u.npy", np.arange(60, dtype=np.uint8).reshape(10, 6))
    dm = ArrayDataModule(path=str(tmp_path / "u.npy"), val_size=2, test_size=2)
    assert dm.shape == (1, 1, 6) and not dm.real_values


def test_the_given_test_split_is_the_test_array_in_order(tmp_path):
    x, y = clusters(50)
    x_test, y_test = clusters(12, seed=1)
    path = tmp_path / "f.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    dm = ArrayDataModule(path=str(path), labels_key="y", test_key="x_test",
                         test_labels_key="y_test", val_size=10)
    dm.setup()
    assert torch.equal(dm.splits["test"][0], torch.from_numpy(x_test))
    assert torch.equal(dm.splits["test"][1], torch.from_numpy(y_test))
    assert {s: len(dm.splits[s][0]) for s in ("train", "val")} == {"train": 40, "val": 10}
    rest = torch.cat([dm.splits["train"][0], dm.splits["val"][0]])
    assert sorted(map(tuple, rest.numpy())) == sorted(map(tuple, x))
    # a fraction of the images for validation, as without test_key
    dm = ArrayDataModule(path=str(path), labels_key="y", test_key="x_test",
                         test_labels_key="y_test")
    dm.setup()
    assert len(dm.splits["val"][0]) == 5 and len(dm.splits["test"][0]) == 12


def test_the_given_test_split_is_read_only_by_a_stage_that_uses_it(tmp_path, monkeypatch):
    x, y = clusters(50)
    np.savez_compressed(tmp_path / "f.npz", x=x, y=y, x_test=x[:12], y_test=y[:12])
    dm = ArrayDataModule(path=str(tmp_path / "f.npz"), labels_key="y", test_key="x_test",
                         test_labels_key="y_test", val_size=10)
    reads = []
    real = ArrayDataModule._read_test
    monkeypatch.setattr(ArrayDataModule, "_read_test",
                        lambda self, archive: reads.append(1) or real(self, archive))
    dm.setup("validate")  # vae-eval on the validation split: the test array stays unread
    assert reads == [] and set(dm.splits) == {"val"} and len(dm.splits["val"][0]) == 10
    dm.setup("fit")  # fitting checks the test split before the first step
    assert reads == [1] and len(dm.splits["test"][0]) == 12


@pytest.mark.parametrize("arrays, kwargs, words", [
    ({}, {"test_key": "x_test", "test_size": 5}, "test_size=5 and data.test_key='x_test'"),
    ({}, {"test_labels_key": "y_test"}, "test_labels_key='y_test' without test_key"),
    ({}, {"test_key": "x_test", "labels_key": "y"}, "labels_key='y' and data.test_labels_key=None"),
    ({}, {"test_key": "x_test", "test_labels_key": "y_test"},
     "labels_key=None and data.test_labels_key='y_test'"),
    ({}, {"test_key": "nope"}, "test_key='nope' is not an array of"),
    ({"x_test": np.zeros((4, 5), np.float32)}, {"test_key": "x_test"},
     r"holds float32 \[4, 5\]: expected test images like the images, float32 \[N, 6\]"),
    ({"x_test": np.zeros((4, 6), np.float64)}, {"test_key": "x_test"}, "float64"),
    ({"y_test": np.zeros(3, np.int64)},
     {"test_key": "x_test", "labels_key": "y", "test_labels_key": "y_test"},
     r"has shape \[3\]: expected one label per test image, \[12\]"),
    ({"x_test": np.full((12, 6), np.inf, np.float32)}, {"test_key": "x_test"},
     "vector 0 .* holds a value that is not finite: expected finite feature vectors"),
    ({}, {"binarize": "dynamic"}, "binarize='dynamic', but .* holds float feature vectors"),
])
def test_inconsistent_options_are_refused_with_the_key_named(tmp_path, arrays, kwargs, words):
    x, y = clusters(50)
    x_test, y_test = clusters(12, seed=1)
    path = tmp_path / "f.npz"
    np.savez(path, **{"x": x, "y": y, "x_test": x_test, "y_test": y_test, **arrays})
    with pytest.raises(DataError, match=words):
        ArrayDataModule(path=str(path), **kwargs).setup()


@pytest.mark.parametrize("key", ["x", "x_test"])
def test_a_float64_vector_beyond_float32_is_refused_naming_the_vector(tmp_path, key):
    """Feature vectors are served as float32: a float64 value finite in the file (1e300) but
    infinite as float32 is refused where the file is read, naming the vector; it passed the
    check, became inf, and training ended in a traceback from the first callback that met it."""
    x, y = clusters(50)
    x_test, _ = clusters(12, seed=1)
    arrays = {"x": x.astype(np.float64), "x_test": x_test.astype(np.float64)}
    arrays[key][7, 2] = 1e300
    path = tmp_path / "f.npz"
    np.savez(path, y=y, **arrays)
    with pytest.raises(DataError, match=rf"'{key}'.*: vector 7 \(of 1 such\) holds a value "
                       r"beyond float32's range .* expected finite feature vectors"):
        ArrayDataModule(path=str(path), test_key="x_test").setup()


def test_test_key_needs_a_npz(tmp_path):
    np.save(tmp_path / "v.npy", clusters(20)[0])
    with pytest.raises(DataError, match="test_key='x_test' names an array in a .npz file"):
        ArrayDataModule(path=str(tmp_path / "v.npy"), test_key="x_test")


@pytest.mark.parametrize("overrides, words", [
    ([], r"model/likelihood \(ContinuousBernoulli\) is a distribution of values in \[0, 1\]"
         r".*: model/likelihood=gaussian model.decoder.likelihood.mean_activation=identity\.$"),
    (["model/likelihood=bernoulli"], r"\(Bernoulli\) is a distribution of binary values"),
    (["model/likelihood=gaussian"], "mean_activation=sigmoid keeps the decoder's mean in"),
])
def test_a_likelihood_without_a_density_on_real_numbers_is_refused(tmp_path, overrides, words):
    np.save(tmp_path / "v.npy", clusters(40)[0])
    cfg = compose_train(["data=array", f"data.path={tmp_path / 'v.npy'}", *overrides], tmp_path)
    with pytest.raises(ConfigError, match=words):
        build_run(cfg)


def test_m2_on_vectors_learns_to_classify_from_few_labels(tmp_path, one_thread):
    """M2 (Kingma et al. 2014) on real feature vectors, 12 labels of 600 points (4 per class):
    the test error on the given test split falls far below chance (2/3)."""
    x, y = clusters(600)
    x_test, y_test = clusters(150, seed=1)
    path = tmp_path / "features.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    torch.manual_seed(0)
    train(compose_train([
        "model=m2", "data=array", f"data.path={path}", "data.key=x_train",
        "data.labels_key=y_train", "data.test_key=x_test", "data.test_labels_key=y_test",
        "data.labelled=12", "data.labelled_batch=6", "data.batch_size=50", "data.val_size=60",
        "model/likelihood=gaussian", "model.decoder.likelihood.mean_activation=identity",
        "model.classes=3", "model.latent=2", "model.encoder.net.hidden=[32]",
        "model.decoder.net.hidden=[32]", "model.objective.hidden=[32]",
        "trainer.max_steps=400", "logger=none",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "callbacks.figures=null", "callbacks.bound_curve=null"], tmp_path / "run"))
    results = Evaluation(k=2, device="cpu", data_path=str(path))(
        str(tmp_path / "run/checkpoints/last.ckpt"), 0, str(tmp_path))
    assert results["n"] == 150  # the given test split
    assert results["classification_error"] < 0.2, results["classification_error"]


def test_the_m1_m2_presets_chain_through_vae_encode(tmp_path, one_thread):
    """experiment=m1_mnist, then vae-encode's locations of its train and test splits, then
    experiment=m1_m2_mnist on them (shortened): M2 reads M1's latent variables, drawn afresh
    from its posterior (data.std_key), as real feature vectors with a Gaussian likelihood,
    validates on a share of M1's training split and is tested on M1's test images, whose
    classification error vae-eval reports."""
    from vae_lightning.encode import Encoding

    root = compose.mnist_like(tmp_path / "data", train=200, test=50)
    short = ["trainer.max_steps=20", "logger=none", "trainer.enable_progress_bar=false",
             "trainer.enable_model_summary=false", "callbacks.figures=null",
             "callbacks.bound_curve=null"]
    m1 = train(compose_train(["experiment=m1_mnist", f"data.root={root}", "data.val_size=50",
                              *short], tmp_path / "m1"))
    features = tmp_path / "m1" / "locations.npz"
    # units=all: after 20 steps no unit is active yet (units=active: test_encode.py)
    Encoding(m1["checkpoint"], splits=["train", "test"], out=str(features),
             data_root=str(root), device="cpu")()
    with np.load(features, allow_pickle=False) as saved:
        assert saved["x_train"].shape == saved["s_train"].shape == (150, 50)
        assert saved["x_test"].shape == (50, 50)
    m2 = train(compose_train(["experiment=m1_m2_mnist", f"data.path={features}",
                              "data.labelled=10", "data.labelled_batch=5", "data.batch_size=25",
                              *short], tmp_path / "m2"))
    results = Evaluation(k=2, device="cpu", data_path=str(features))(m2["checkpoint"], 0,
                                                                     str(tmp_path))
    assert results["n"] == 50 and 0 <= results["classification_error"] <= 1
    assert results["latent"] == 50


def test_feature_vectors_get_no_pictures(tmp_path):
    """The figures of a run on feature vectors: the curves and the latent scatter, no samples,
    reconstructions or manifold drawn as if the vectors were images."""
    np.save(tmp_path / "v.npy", clusters(120, d=4)[0])
    train(compose_train(["data=array", f"data.path={tmp_path / 'v.npy'}",
                         "model/likelihood=gaussian",
                         "model.decoder.likelihood.mean_activation=identity", "model.latent=2",
                         "trainer.max_steps=3", "logger=none", "trainer.enable_progress_bar=false",
                         "trainer.enable_model_summary=false"], tmp_path / "run"))
    drawn = sorted(p.stem for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert drawn == ["curves", "latents"]
    # eval.json says what its numbers are for vectors: not "a density of pixel values in
    # [0, 1]" (newcomer walkthrough seven).
    results = Evaluation(k=2, device="cpu", data_path=str(tmp_path / "v.npy"))(
        str(tmp_path / "run/checkpoints/last.ckpt"), 0, str(tmp_path / "eval"))
    assert "density of the real-valued feature vectors" in results["units"]
    assert "pixel" not in results["units"]
    # vae-sample: the array of samples, no grid of 1 x D strips
    out = compose.sample_config([f"ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}", "n=5",
                                 "device=cpu"])()
    assert np.load(out / "samples.npy").shape == (5, 1, 1, 4)
    assert not (out / "samples.png").exists()
    # A picture of one's own in a given output_dir is not in the way: none is drawn.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "samples.png").write_bytes(b"my picture")
    compose.sample_config([f"ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}", "n=5",
                           "device=cpu", f"output_dir={mine}"])()
    assert (mine / "samples.png").read_bytes() == b"my picture"
    assert np.load(mine / "samples.npy").shape == (5, 1, 1, 4)
