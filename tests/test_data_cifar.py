"""data=cifar10: the official binary format read from a tiny archive written here (nothing is
fetched), the download path with its md5 check (a local fetch), one-line errors for bad
archives, and training end to end."""

import gzip
import hashlib
import io
import json
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from compose import compose_train

from vae_lightning.data import CIFAR10DataModule, DataError
from vae_lightning.data import cifar as cifar_module
from vae_lightning.data import download as download_module
from vae_lightning.data.download import DataNotFoundError
from vae_lightning.module import VAE
from vae_lightning.rebuild import load_model
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
# The figures at the end of fit, few enough to draw in a second: the logistic mixture's mean
# sums over its 256 values, so 400 manifold points and 100 samples cost a minute on a CPU.
SMALL_FIGURES = ["callbacks.figures.grid=3", "callbacks.figures.n_samples=4"]
PER_BATCH, N_TEST = 4, 6


def records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The official record format, written out by its definition: per image, the label byte,
    then the 1024 red, the 1024 green and the 1024 blue bytes, each plane row by row."""
    out = bytearray()
    for image, label in zip(images, labels, strict=True):
        out.append(int(label))
        for plane in image:  # R, G, B
            for row in plane:
                out.extend(int(v) for v in row)
    return bytes(out)


def batches(seed=0, per_batch=PER_BATCH, n_test=N_TEST):
    """``{file name: (images [n, 3, 32, 32], labels [n])}`` for the six batch files."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    return {name: (rng.integers(0, 256, (n, 3, 32, 32), np.uint8), rng.integers(0, 10, n))
            for name, n in zip(names, [per_batch] * 5 + [n_test], strict=True)}


def write_archive(path: Path, files: dict[str, bytes], gz=True) -> Path:
    """A tar (gzipped or not) holding ``files`` under cifar-10-batches-bin/, as the official one
    (with its batches.meta.txt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in {"batches.meta.txt": b"airplane\nautomobile\n", **files}.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cifar_root(tmp_path):
    data = batches()
    write_archive(tmp_path / "cifar10" / "cifar-10-binary.tar.gz",
                  {name: records(*arrays) for name, arrays in data.items()})
    return tmp_path, data


def module(root, **kwargs):
    return CIFAR10DataModule(root=str(root), download=False, **{"val_size": 5, **kwargs})


def test_reads_the_binary_format(cifar_root):
    root, data = cifar_root
    dm = module(root, batch_size=4)
    assert dm.shape == (3, 32, 32) and dm.name == "cifar10"
    dm.prepare_data()
    dm.setup()
    assert {k: len(v[0]) for k, v in dm.splits.items()} == {"train": 15, "val": 5, "test": 6}
    test_x, test_y = dm.splits["test"]
    assert test_x.dtype == torch.uint8 and test_x.shape == (6, 3, 32, 32)
    assert np.array_equal(test_x.numpy(), data["test_batch.bin"][0])  # in file order
    assert np.array_equal(test_y.numpy(), data["test_batch.bin"][1])
    # Train and val: the five training files in order, val carved by the fixed permutation.
    train_x = np.concatenate([data[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_y = np.concatenate([data[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    got = {bytes(x): int(y) for s in ("train", "val")
           for x, y in zip(dm.splits[s][0].numpy(), dm.splits[s][1].numpy(), strict=True)}
    assert got == {bytes(x): int(y) for x, y in zip(train_x, train_y, strict=True)}
    batch = next(iter(dm.test_dataloader()))
    inputs, labels = dm.to_inputs(batch)
    assert inputs.dtype == torch.float32 and inputs.shape == (4, 3, 32, 32)
    assert torch.equal(inputs, batch[0].float() / 255) and labels.dtype == torch.int64
    # The red plane comes first: channel 0 of the first test image is its first 1024 bytes.
    raw = records(*data["test_batch.bin"])
    assert np.array_equal(test_x[0, 0].numpy().ravel(), np.frombuffer(raw[1:1025], np.uint8))


def test_plain_tar_and_extracted_batches(cifar_root, tmp_path):
    root, data = cifar_root
    reference = module(root)
    reference.setup()
    plain = tmp_path / "plain"
    with gzip.open(root / "cifar10" / "cifar-10-binary.tar.gz") as src, \
            open(write_dir(plain) / "cifar-10-binary.tar", "wb") as dst:
        shutil.copyfileobj(src, dst)
    extracted = tmp_path / "extracted"
    with tarfile.open(root / "cifar10" / "cifar-10-binary.tar.gz") as tar:
        tar.extractall(write_dir(extracted), filter="data")
    for other in (plain, extracted):
        dm = module(other)
        dm.prepare_data()
        dm.setup()
        for split in ("train", "val", "test"):
            assert torch.equal(dm.splits[split][0], reference.splits[split][0])
            assert torch.equal(dm.splits[split][1], reference.splits[split][1])


def write_dir(root: Path) -> Path:
    (root / "cifar10").mkdir(parents=True)
    return root / "cifar10"


def test_val_split_is_fixed_across_seeds(cifar_root):
    root, _ = cifar_root

    def val(seed):
        dm = module(root, seed=seed)
        dm.setup("validate")
        return dm.splits["val"][0]

    assert torch.equal(val(0), val(8))
    with pytest.raises(DataError, match="val_size=20 is invalid for cifar10: expected fewer "
                                        "than 20"):
        module(root, val_size=20).setup("fit")
    assert CIFAR10DataModule().val_size == 5000


def test_missing_archive_without_download(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-binary.tar.gz") as err:
        module(tmp_path).prepare_data()
    message = str(err.value)
    assert str(tmp_path / "cifar10") in message and "data.download=false" in message
    assert "c32a1d4ab5d03f1284b67883e8d87530" in message
    assert "https://www.cs.toronto.edu/~kriz/" in message


def test_download_checks_the_md5_and_writes_atomically(cifar_root, tmp_path, monkeypatch):
    """A local stand-in for the network: the archive is "fetched" by copying a file."""
    root, _ = cifar_root
    archive = root / "cifar10" / "cifar-10-binary.tar.gz"
    asked = []

    def fetch(url, dest, timeout=60.0):
        asked.append(url)
        shutil.copyfile(archive, dest)

    monkeypatch.setattr(download_module, "fetch", fetch)
    fresh = tmp_path / "fresh"
    dm = CIFAR10DataModule(root=str(fresh), val_size=5)
    with pytest.raises(DataNotFoundError, match="does not match the expected "
                                                "c32a1d4ab5d03f1284b67883e8d87530"):
        dm.prepare_data()  # our tiny archive is not the canonical one
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert not (fresh / "cifar10").exists()  # no partial file left, nor the folder made for it
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10DataModule, "files", {"cifar-10-binary.tar.gz": md5})
    dm.prepare_data()
    assert [p.name for p in (fresh / "cifar10").iterdir()] == ["cifar-10-binary.tar.gz"]
    dm.setup("test")
    assert len(dm.splits["test"][0]) == N_TEST


def bad_archive(root: Path, **changes) -> Path:
    files = {name: records(*arrays) for name, arrays in batches().items()}
    files.update(changes)
    return write_archive(root / "cifar10" / "cifar-10-binary.tar.gz",
                         {k: v for k, v in files.items() if v is not None})


@pytest.mark.parametrize("changes, member, words", [
    ({"data_batch_3.bin": b"\0" * 3074}, "data_batch_3.bin",
     "is 3074 bytes: expected a positive multiple of 3073"),
    ({"test_batch.bin": b""}, "test_batch.bin", "is 0 bytes"),
    ({"data_batch_2.bin": None}, None, "lacks data_batch_2.bin"),
    ({"data_batch_1.bin": bytes([10]) + b"\0" * 3072}, "data_batch_1.bin",
     r"holds a label outside 0..9 \(image 0, of 1 such\)"),
])
def test_bad_members(tmp_path, changes, member, words):
    archive = bad_archive(tmp_path, **changes)
    dm = module(tmp_path)
    with pytest.raises(DataError, match=words) as err:
        dm.setup()
    message = str(err.value)
    assert str(archive) in message and len(message.splitlines()) == 1
    if member:
        assert f"member cifar-10-batches-bin/{member}" in message


def test_corrupt_archives(tmp_path):
    archive = bad_archive(tmp_path)
    whole = archive.read_bytes()
    for content in (whole[: len(whole) // 2], b"not a tar at all", whole[:10] + b"\0" * 500):
        archive.write_bytes(content)
        with pytest.raises(DataError, match="cannot be read as a tar archive") as err:
            module(tmp_path).setup()
        assert str(archive) in str(err.value)
    shutil.rmtree(tmp_path / "cifar10")
    (write_dir(tmp_path) / "cifar-10-batches-bin").mkdir()
    for name, arrays in batches().items():
        (tmp_path / "cifar10" / "cifar-10-batches-bin" / name).write_bytes(records(*arrays))
    (tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="test_batch.bin is 10 bytes"):
        module(tmp_path).setup("test")


def test_config_and_training_end_to_end(tmp_path, monkeypatch):
    data = batches(per_batch=6, n_test=10)
    write_archive(tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz",
                  {name: records(*arrays) for name, arrays in data.items()})
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "data"))
    cfg = compose_train(["data=cifar10"], tmp_path / "check")
    assert (cfg.model.decoder.likelihood._target_
            == "vae_lightning.likelihoods.DiscretizedLogisticMixture")
    assert cfg.data.root == str(tmp_path / "data") and cfg.data.val_size == 5000
    assert build_run(cfg).datamodule.shape == (3, 32, 32)
    out = tmp_path / "run"
    results = train(compose_train(
        ["data=cifar10", "data.download=false", "data.val_size=10", "data.batch_size=10",
         "model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
         "trainer.max_epochs=1", "trainer.accelerator=cpu", *QUIET, *SMALL_FIGURES], out))
    assert results["data"] == "cifar10" and results["steps"] == 2
    assert math.isfinite(results["test/elbo"]) and (out / "results.json").is_file()
    assert cifar_module.CLASSES[0] == "airplane" and len(cifar_module.CLASSES) == 10


def test_conv_cifar10_experiment_end_to_end(tmp_path, monkeypatch):
    """experiment=conv_cifar10 (residual networks, the logistic mixture, Adamax, KL warm-up),
    shrunk to run in seconds, trained on a generated archive in the official binary format."""
    data = batches(per_batch=6, n_test=10)
    write_archive(tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz",
                  {name: records(*arrays) for name, arrays in data.items()})
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "run"
    cfg = compose_train(
        ["experiment=conv_cifar10", "data.download=false", "data.val_size=10",
         "data.batch_size=10", "model.latent=4", "model.encoder.net.channels=[8,8,8]",
         "model.decoder.net.channels=[8,8,8]", "model.encoder.net.blocks=1",
         "model.decoder.net.blocks=1", "model.decoder.likelihood.n_components=2",
         "trainer.max_epochs=1", "trainer.accelerator=cpu", *QUIET, *SMALL_FIGURES], out)
    assert cfg.model.encoder.net._target_ == "vae_lightning.conv_nets.ResNetEncoder"
    assert cfg.model.decoder.net._target_ == "vae_lightning.conv_nets.ResNetDecoder"
    assert cfg.model.optimizer._target_ == "torch.optim.Adamax"
    assert cfg.model.objective.warmup_steps == 20000
    assert (cfg.model.decoder.likelihood._target_
            == "vae_lightning.likelihoods.DiscretizedLogisticMixture")
    assert build_run(cfg).datamodule.shape == (3, 32, 32)
    results = train(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == results["status"] == "completed"
    assert saved["data"] == "cifar10" and saved["steps"] == 2  # 20 training images, batch 10
    assert saved["likelihood"] == "logistic_mixture" and saved["latent"] == 4
    elbo = saved["test/elbo"]
    assert math.isfinite(elbo) and elbo < 0
    assert saved["test/bits_per_dim"] == pytest.approx(-elbo / (3 * 32 * 32 * math.log(2)),
                                                       rel=1e-5)
    # The best checkpoint rebuilds the same model: Adamax and the logistic mixture, as run.
    model, config, _ = load_model(saved["checkpoint"], VAE)
    assert config["model"]["optimizer"]["_target_"] == "torch.optim.Adamax"
    assert type(model.decoder.likelihood).__name__ == "DiscretizedLogisticMixture"
