"""Data modules: interface, validation, binarization, sharding, and MNIST end to end."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import scipy.io
import torch
import yaml
from compose import compose_train
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from vae_lightning.args import ArgumentError, choices
from vae_lightning.data import FashionMNISTDataModule, FreyFaceDataModule, MNISTDataModule
from vae_lightning.data.download import DataNotFoundError
from vae_lightning.data.frey import frey_images, load_bundled_frey
from vae_lightning.data.idx import write_idx
from vae_lightning.data.sampling import ShardedBatchSampler

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    """A root holding small MNIST-format files: 300 train, 100 test images (gz and plain)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    for prefix, n, ext in [("train", 300, ".gz"), ("t10k", 100, "")]:
        write_idx(
            d / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), np.uint8)
        )
        write_idx(d / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n).astype(np.uint8))
    return tmp_path


def fake_trainer(rank=0, world_size=1, epoch=0, done=0):
    """What the data modules read of a trainer; ``done``: the batches of the epoch already
    trained (a run continued mid-epoch)."""
    progress = SimpleNamespace(current=SimpleNamespace(completed=done))
    return SimpleNamespace(
        global_rank=rank,
        world_size=world_size,
        current_epoch=epoch,
        overfit_batches=0,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )


def batches(dm, loader):
    return [dm.to_inputs(b) for b in loader]


def test_interface_without_setup():
    for cls, shape, lik, name in [
        (MNISTDataModule, (1, 28, 28), "Bernoulli", "mnist"),
        (FashionMNISTDataModule, (1, 28, 28), "Bernoulli", "fashion_mnist"),
        (FreyFaceDataModule, (1, 28, 20), "Gaussian", "frey"),
    ]:
        dm = cls(root="nowhere")
        assert (tuple(dm.shape), dm.name) == (shape, name)
        # The likelihood each data set wants is picked by its YAML (no default_likelihood now):
        # `override /model/likelihood` in conf/data/<name>.yaml, composed into the decoder.
        data_yaml = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert {"override /model/likelihood": lik.lower()} in data_yaml["defaults"]
        cfg = compose_train([f"data={name}"])
        assert cfg.model.decoder.likelihood._target_ == f"vae_lightning.likelihoods.{lik}"
    assert MNISTDataModule().binarize == FashionMNISTDataModule().binarize == "dynamic"
    assert choices(FreyFaceDataModule, "binarize") == ("none",)
    assert choices(MNISTDataModule, "binarize") == ("none", "static", "dynamic")


@pytest.mark.parametrize(
    "cls, kwargs, word",
    [
        (MNISTDataModule, {"batch_size": 0}, "batch_size=0"),
        (MNISTDataModule, {"batch_size": 2.5}, "batch_size=2.5"),
        (MNISTDataModule, {"eval_batch_size": -1}, "eval_batch_size=-1"),
        (MNISTDataModule, {"seed": -3}, "seed=-3"),
        (MNISTDataModule, {"num_workers": -1}, "num_workers=-1"),
        (MNISTDataModule, {"on_device": "yes"}, "on_device='yes'"),
        (MNISTDataModule, {"download": 1}, "download=1"),
        (MNISTDataModule, {"scale": 1.0}, "scale=1.0"),
        (MNISTDataModule, {"val_size": -1}, "val_size=-1"),
        (MNISTDataModule, {"binarize": "otsu"}, "binarize='otsu'"),
        (MNISTDataModule, {"root": 3}, "root=3"),
        (FreyFaceDataModule, {"binarize": "dynamic"}, "binarize='dynamic'"),
        (FreyFaceDataModule, {"val_size": 1000, "test_size": 1000},
         "test_size=1000 is not allowed: val_size + test_size must be below the 1965"),
    ],
)
def test_bad_arguments(cls, kwargs, word):
    with pytest.raises(ArgumentError, match=word.replace(".", r"\.").replace("+", r"\+")):
        cls(**kwargs)


def test_mnist_end_to_end(mnist_root, caplog):
    dm = MNISTDataModule(root=str(mnist_root), batch_size=32, eval_batch_size=40, val_size=50)
    dm.prepare_data()
    with caplog.at_level("INFO"):
        dm.setup("fit")
        dm.setup("test")
    # Which copy of the files was read (one data set may come from several folders).
    for prefix in ("train", "t10k"):
        image_file = next((mnist_root / "mnist").glob(f"{prefix}-images-idx3-ubyte*"))
        assert f"mnist: reading {image_file} and {prefix}-labels-idx1-ubyte" in caplog.text
    assert {k: len(v[0]) for k, v in dm.splits.items()} == {"train": 250, "val": 50, "test": 100}
    raw = next(iter(dm.train_dataloader()))
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (32, 28, 28)
    train = batches(dm, dm.train_dataloader())
    assert [len(x) for x, _ in train] == [32] * 7 + [26]
    for x, y in train:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28) and y.dtype == torch.int64
        assert set(x.unique().tolist()) <= {0.0, 1.0} and 0 <= y.min() and y.max() <= 9
    test = batches(dm, dm.test_dataloader())
    assert [len(x) for x, _ in test] == [40, 40, 20]
    torch.testing.assert_close(torch.cat([y for _, y in test]), dm.splits["test"][1])


def test_val_carved_with_fixed_seed(mnist_root):
    def val_labels(seed):
        dm = MNISTDataModule(root=str(mnist_root), val_size=50, seed=seed)
        dm.setup("validate")
        return dm.splits["val"][0]

    torch.testing.assert_close(val_labels(0), val_labels(7))  # same split for every run seed


def test_missing_files_error(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte.gz") as err:
        dm.prepare_data()
    assert str(tmp_path / "mnist") in str(err.value)


def test_train_order_per_epoch(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), val_size=50, batch_size=50, binarize="none")
    dm.setup("fit")
    loader = dm.train_dataloader()

    def epoch_labels(epoch):
        loader.sampler.set_epoch(epoch)
        return torch.cat([y for _, y in loader])

    first, second = epoch_labels(0), epoch_labels(1)
    assert not torch.equal(first, second)
    torch.testing.assert_close(epoch_labels(0), first)  # reproducible: resumable from (seed, epoch)
    dm.trainer = fake_trainer(epoch=1)
    torch.testing.assert_close(torch.cat([y for _, y in dm.train_dataloader()]), second)
    dm.trainer = fake_trainer(epoch=1, done=3)  # continued after 3 of the epoch's batches
    torch.testing.assert_close(torch.cat([y for _, y in dm.train_dataloader()]), second[150:])


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
def test_binarization_modes(mnist_root, mode):
    dm = MNISTDataModule(root=str(mnist_root), val_size=50, batch_size=64, binarize=mode)
    dm.setup("fit")
    loader = dm.train_dataloader()

    def epoch_images(epoch):  # the training images of one epoch, in index order
        loader.sampler.set_epoch(epoch)
        xs = torch.cat([x for x, _ in batches(dm, loader)])
        return xs[loader.sampler.shard().argsort()]

    first, second = epoch_images(0), epoch_images(1)
    if mode == "none":
        torch.testing.assert_close(first, dm.splits["train"][0][:, None].float() / 255)
    else:
        assert set(first.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(first, second) == (mode == "static")
    # Evaluation data is the same every epoch in every mode: dynamic binarizes val/test once.
    eval_a, eval_b = (torch.cat([x for x, _ in batches(dm, dm.val_dataloader())]) for _ in "ab")
    assert torch.equal(eval_a, eval_b)
    if mode != "none":
        assert set(eval_a.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("scale", [255, 256, 300.5])
def test_dynamic_binarization_draws_bernoulli_of_pixel_over_scale(scale):
    """Each pixel is 1 with probability x / scale: with uint8 draws for scale 255 or 256, with
    float draws otherwise."""
    dm = MNISTDataModule(scale=scale)
    values = torch.tensor([0, 1, 51, 128, 254, 255], dtype=torch.uint8)
    # 20000 draws of each value: the first six pixels of 20000 MNIST-sized images (the rest 0).
    x = torch.zeros(20000, 28 * 28, dtype=torch.uint8)
    x[:, : len(values)] = values
    drawn, _ = dm.to_inputs((x.reshape(-1, 28, 28), torch.zeros(len(x))))
    assert drawn.dtype == torch.float32 and drawn.shape == (len(x), 1, 28, 28)
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    assert drawn.flatten(1)[:, len(values):].sum() == 0  # never 1 when x = 0
    drawn = drawn.flatten(1)[:, : len(values)]
    expected = values.double() / scale
    assert drawn[:, 0].sum() == 0  # never 1 when x = 0
    tolerance = 4 * (expected * (1 - expected) / len(x)).sqrt() + 1e-9
    assert ((drawn.double().mean(0) - expected).abs() <= tolerance).all()


def test_static_draw_is_seeded_and_eval_draw_is_fixed(mnist_root):
    def draw(seed, split):
        dm = MNISTDataModule(root=str(mnist_root), val_size=50, binarize="static", seed=seed)
        dm.setup("fit" if split == "train" else "test")
        return dm.splits[split][0]

    assert torch.equal(draw(1, "train"), draw(1, "train"))
    assert not torch.equal(draw(1, "train"), draw(2, "train"))
    assert torch.equal(draw(1, "test"), draw(2, "test"))  # every run scored on the same draw


@pytest.mark.parametrize("n, batch_size", [(100, 7), (101, 10), (5, 2), (1565, 100)])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharding(n, batch_size, world):
    train = [
        ShardedBatchSampler(n, batch_size, True, seed=3, rank=r, world_size=world)
        for r in range(world)
    ]
    for s in train:
        s.set_epoch(5)
    shards = [torch.cat(list(s)) for s in train]
    assert len({len(list(s)) for s in train}) == 1  # same number of batches on every rank
    assert [len(list(s)) for s in train] == [len(s) for s in train]
    seen = torch.cat(shards)
    assert len(seen.unique()) == len(seen) == n - n % world  # disjoint, at most world-1 left out
    evals = [
        ShardedBatchSampler(n, batch_size, False, rank=r, world_size=world) for r in range(world)
    ]
    assert [len(list(s)) for s in evals] == [len(s) for s in evals]
    torch.testing.assert_close(torch.cat([torch.cat(list(s)) for s in evals]), torch.arange(n))


def test_datamodule_shards_by_trainer_rank(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), val_size=50, batch_size=20, binarize="none")
    dm.setup("test")
    per_rank = []
    for rank in range(3):
        dm.trainer = fake_trainer(rank, 3)
        per_rank.append(torch.cat([y for _, y in dm.test_dataloader()]))
    torch.testing.assert_close(torch.cat(per_rank), dm.splits["test"][1])
    gens = []
    for rank in range(2):  # dynamic binarization: a generator per (seed, rank)
        dm = MNISTDataModule(root=str(mnist_root), val_size=50)
        dm.trainer = fake_trainer(rank, 2)
        gens.append(dm._generator(torch.device("cpu")).initial_seed())
    assert gens[0] != gens[1]


def test_frey_split_and_batches():
    dm = FreyFaceDataModule(root="nowhere", batch_size=100)
    dm.setup()
    sizes = {k: len(v[0]) for k, v in dm.splits.items()}
    assert sizes == {"train": 1565, "val": 200, "test": 200}
    x, y = dm.to_inputs(next(iter(dm.train_dataloader())))
    assert x.shape == (100, 1, 28, 20) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert (y == -1).all() and y.dtype == torch.int64
    assert [len(b[0]) for b in dm.train_dataloader()] == [100] * 15 + [65]


def test_frey_split_covers_all_faces():
    dm = FreyFaceDataModule()
    dm.setup()
    ours = torch.cat([dm.splits[s][0] for s in ("train", "val", "test")]).flatten(1).numpy()
    faces = frey_images(load_bundled_frey()).reshape(1965, 560)
    assert sorted(map(bytes, ours)) == sorted(map(bytes, faces))


def test_frey_reads_user_mat(tmp_path):
    ff = np.random.default_rng(1).integers(0, 256, (560, 1965), np.uint8)
    (tmp_path / "frey").mkdir()
    scipy.io.savemat(tmp_path / "frey" / "frey_rawface.mat", {"ff": ff})
    dm = FreyFaceDataModule(root=str(tmp_path), val_size=10, test_size=10)
    dm.setup("test")
    faces = {bytes(f) for f in ff.T}
    assert all(bytes(f) in faces for f in dm.splits["test"][0].flatten(1).numpy())


@pytest.mark.parametrize("name", ["imgs", "digits.npy", "faces.png", "missing.mat"])
def test_data_of_ones_own_given_to_the_default_frey_names_the_data_sets_that_read_it(
        tmp_path, name):
    """data.path without data= (data=frey, the default): a folder, an array file or an image
    is refused naming data=folder and data=array (it said only "expected frey_rawface.mat")."""
    from vae_lightning.errors import DataError

    path = tmp_path / name
    if name == "imgs":
        path.mkdir()
    elif name != "missing.mat":
        path.write_bytes(b"\x93NUMPY" if name.endswith(".npy") else b"\x89PNG")
    dm = FreyFaceDataModule(path=str(path))
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert f"data.path={str(path)!r}" in str(err.value)
    assert ("data=frey (the default data set) reads Frey Face's .mat file; for data of your own: "
            "data=folder data.path=<a folder of images>, or data=array data.path=<a .npy or .npz "
            "file>.") in str(err.value)


def test_workers_and_lightning_hook(mnist_root):
    seen = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(784, 1)

        def training_step(self, batch, _):
            x, y = batch
            seen.append((self.current_epoch, x.dtype, x.shape[1:], y.dtype, y[:5].tolist()))
            return self.layer(x.flatten(1)).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = MNISTDataModule(root=str(mnist_root), val_size=50, batch_size=50, num_workers=1)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert [s[1:4] for s in seen] == [(torch.float32, (1, 28, 28), torch.int64)] * 10
    assert seen[0][0] == 0 and seen[5][0] == 1 and seen[0][4] != seen[5][4]  # reshuffled per epoch


@pytest.mark.parametrize(
    "name, cls, likelihood",
    [
        ("mnist", MNISTDataModule, "bernoulli"),
        ("fashion_mnist", FashionMNISTDataModule, "bernoulli"),
        ("frey", FreyFaceDataModule, "gaussian"),
    ],
)
def test_yaml_composes_and_instantiates(name, cls, likelihood, monkeypatch, tmp_path):
    """conf/data/*.yaml in a minimal primary config: likelihood override, keys, interpolations."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf / "data")
    liks = conf / "model" / "likelihood"
    liks.mkdir(parents=True)
    for lik in ("bernoulli", "gaussian"):
        # The package of the real model/likelihood group: the decoder's likelihood.
        (liks / f"{lik}.yaml").write_text(f"# @package model.decoder.likelihood\nname: {lik}\n")
    (conf / "train.yaml").write_text(
        "defaults:\n  - _self_\n  - model/likelihood: bernoulli\n  - data: frey\nseed: 11\n"
    )
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={name}"])
        assert cfg.model.decoder.likelihood.name == likelihood
        dm = instantiate(cfg.data)
        assert type(dm) is cls and dm.seed == 11 and dm.root == tmp_path
        assert dm.eval_batch_size == dm.batch_size == 100
        assert (
            compose("train", overrides=[f"data={name}", "model/likelihood=gaussian"])
            .model.decoder.likelihood.name
            == "gaussian"
        )
        assert (
            compose("train", overrides=[f"data={name}", "model/likelihood=bernoulli"])
            .model.decoder.likelihood.name
            == "bernoulli"
        )


def test_to_inputs_is_float_images_and_the_lightning_hook_gives_the_same():
    """``to_inputs``: float32 ``[B, C, H, W]``, the old flattened values reshaped; the
    ``on_after_batch_transfer`` hook returns exactly what ``to_inputs`` returns."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.arange(5)
    for scale in (255.0, 256.0):
        dm = MNISTDataModule(binarize="none", scale=scale)
        inputs, labels = dm.to_inputs((x, y))
        assert inputs.dtype == torch.float32 and inputs.shape == (5, 1, 28, 28)
        assert torch.equal(inputs, (x.flatten(1).float() / scale).reshape(5, 1, 28, 28))
        assert torch.equal(labels, y)
        hooked, hooked_labels = dm.on_after_batch_transfer((x, y), 0)
        assert torch.equal(hooked, inputs) and torch.equal(hooked_labels, labels)
    # Images binarized once in setup are bool: they become 0.0/1.0, whatever the mode.
    bits = torch.rand(5, 28, 28, generator=g) < 0.3
    for mode in ("static", "dynamic", "none"):
        dm = MNISTDataModule(binarize=mode)
        inputs, _ = dm.to_inputs((bits, y))
        assert inputs.dtype == torch.float32 and inputs.shape == (5, 1, 28, 28)
        assert torch.equal(inputs, bits.flatten(1).float().reshape(5, 1, 28, 28))
        assert torch.equal(dm.on_after_batch_transfer((bits, y), 0)[0], inputs)
    frey = FreyFaceDataModule(root="nowhere")
    faces = torch.randint(0, 256, (3, 28, 20), generator=g, dtype=torch.uint8)
    inputs, _ = frey.to_inputs((faces, torch.full((3,), -1)))
    assert inputs.dtype == torch.float32 and inputs.shape == (3, 1, 28, 20)
    assert torch.equal(inputs, (faces.flatten(1).float() / 255).reshape(3, 1, 28, 20))
    # Dynamic binarization: the hook draws from the same seeded stream as to_inputs.
    a, b = MNISTDataModule(seed=4), MNISTDataModule(seed=4)
    drawn = a.to_inputs((x, y))[0]
    assert drawn.dtype == torch.float32 and drawn.shape == (5, 1, 28, 28)
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(b.on_after_batch_transfer((x, y), 0)[0], drawn)
    # A batch of several minibatches (steps_per_batch): each one in turn.
    dm = MNISTDataModule(binarize="none", steps_per_batch=2)
    both = dm.to_inputs([(x[:3], y[:3]), (x[3:], y[3:])])
    assert [m[0].shape for m in both] == [(3, 1, 28, 28), (2, 1, 28, 28)]
    assert torch.equal(torch.cat([m[0] for m in both]), dm.to_inputs((x, y))[0])
    hooked = dm.on_after_batch_transfer([(x[:3], y[:3]), (x[3:], y[3:])], 0)
    assert all(torch.equal(h[0], m[0]) for h, m in zip(hooked, both, strict=True))


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} absent (Debian dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_package(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path), download=False)
    dm.prepare_data()
    dm.setup()
    assert {k: tuple(v[0].shape) for k, v in dm.splits.items()} == {
        "train": (50000, 28, 28),
        "val": (10000, 28, 28),
        "test": (10000, 28, 28),
    }
    assert not any(tmp_path.iterdir())


def test_a_data_module_made_in_python_reads_vae_data_dir_as_the_config_does(tmp_path,
                                                                           monkeypatch):
    """``MNISTDataModule()`` in Python looks where ``python train.py data=mnist`` looks:
    ``$VAE_DATA_DIR`` when set (the error of a missing file names that variable), else
    ``./data``; an explicit root wins. Checkpoints' data are found the same way (vae-eval)."""
    from vae_lightning.data.datamodules import default_root

    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path))
    assert MNISTDataModule().root == tmp_path and default_root() == str(tmp_path)
    assert MNISTDataModule(root=tmp_path / "x").root == tmp_path / "x"
    monkeypatch.delenv("VAE_DATA_DIR")
    assert MNISTDataModule().root == Path("data")
