"""Burda et al.'s training setting, as their code runs it: the decoder's output bias from the
mean training image, all training images (no validation split), and the final model reported
for objectives that do not maximise the ELBO."""

import json

import numpy as np
import pytest
import torch
from compose import compose_train

from vae_lightning.callbacks import OutputBias
from vae_lightning.data.idx import write_idx
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import Bernoulli
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none"]


@pytest.fixture
def mnist_root(tmp_path):
    """200 training and 50 test images in MNIST's format: stripes, half the pixels always 0."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for prefix, n in [("train", 200), ("t10k", 50)]:
        images = rng.integers(0, 256, (n, 28, 28), np.uint8)
        images[:, :, ::2] = 0
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return tmp_path / "data"


def test_bernoulli_mean_bias_is_the_clipped_logit():
    mean = torch.tensor([0.0, 0.0005, 0.25, 0.5, 0.9999, 1.0])
    bias = Bernoulli().mean_bias(mean)
    expected = torch.logit(torch.tensor([1e-3, 1e-3, 0.25, 0.5, 1 - 1e-3, 1 - 1e-3]))
    assert torch.allclose(bias, expected)
    # Decoded with zero last weights, p(x|z) has the (clipped) mean whatever z.
    assert torch.allclose(torch.sigmoid(bias), mean.clamp(1e-3, 1 - 1e-3))


def test_the_preset_s_decoder_starts_at_the_mean_training_image(mnist_root, tmp_path):
    cfg = compose_train(["experiment=iwae_mnist", f"data.root={mnist_root}", *QUIET],
                        tmp_path / "run")
    run = build_run(cfg)
    dm, model = run.datamodule, run.model
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["train"][0]) == 200 and len(dm.splits["val"][0]) == 0  # val_size=0
    mean = dm.mean_image("train")
    expected = dm.splits["train"][0].double().mean(0) / 255
    assert torch.allclose(mean, expected.float().reshape(1, 28, 28))
    OutputBias().setup(type("T", (), {"datamodule": dm})(), model, "fit")
    last = model.decoder.net[-1]
    assert torch.allclose(last.bias, torch.logit(mean.flatten().clamp(1e-3, 1 - 1e-3)))
    assert torch.all(last.bias[mean.flatten() == 0] == torch.logit(torch.tensor(1e-3)))
    with torch.no_grad():
        last.weight.zero_()
        p = model.decoder(torch.randn(3, 50)).mean
    assert torch.allclose(p, mean.clamp(1e-3, 1 - 1e-3).expand(3, 1, 28, 28), atol=1e-6)


def test_a_convolutional_decoder_starts_at_each_channel_s_mean_pixel(mnist_root, tmp_path):
    """A transposed convolution has one bias per channel: the logit of the channel's mean
    pixel, so that with zero last weights p(x|z) is that mean at every pixel."""
    cfg = compose_train(["data=mnist", f"data.root={mnist_root}", "model/decoder=conv",
                         "data.val_size=20", *QUIET], tmp_path / "run")
    run = build_run(cfg)
    dm, model = run.datamodule, run.model
    dm.prepare_data()
    dm.setup("fit")
    OutputBias().setup(type("T", (), {"datamodule": dm})(), model, "fit")
    last = model.decoder.net[-1]
    assert isinstance(last, torch.nn.ConvTranspose2d)
    pixel = dm.splits["train"][0].double().mean() / 255  # of the 180 training images
    assert torch.allclose(last.bias, torch.logit(pixel.float()).reshape(1))
    with torch.no_grad():
        last.weight.zero_()
        p = model.decoder(torch.randn(3, model.latent)).mean
    assert torch.allclose(p, pixel.float().expand(3, 1, 28, 28), atol=1e-6)


def test_output_bias_refuses_a_decoder_without_an_output_bias(mnist_root, tmp_path):
    cfg = compose_train(["data=mnist", f"data.root={mnist_root}", "model/decoder=conv",
                         "data.val_size=20",
                         "+callbacks.output_bias._target_=vae_lightning.callbacks.OutputBias",
                         *QUIET], tmp_path / "run")
    run = build_run(cfg)
    run.model.decoder.net[-1].register_parameter("bias", None)
    run.datamodule.prepare_data()
    run.datamodule.setup("fit")
    trainer = type("T", (), {"datamodule": run.datamodule})()
    with pytest.raises(ConfigError, match="callbacks.output_bias.*one per channel.*ends in "
                                          "neither"):
        OutputBias().setup(trainer, run.model, "fit")


@pytest.mark.parametrize("val_size", [0, 40])
def test_iwae_reports_the_final_model(mnist_root, tmp_path, val_size):
    """Trained on all training images (val_size=0: the untrained bound is measured on them) or
    with a validation split; either way the IWAE model reported is the last, not the one with the
    best validation ELBO."""
    cfg = compose_train(["experiment=iwae_mnist", f"data.root={mnist_root}", "trainer.max_epochs=3",
                         f"data.val_size={val_size}", "model.objective.k=2", *QUIET],
                        tmp_path / "run")
    results = train(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert saved["train_samples_seen"] == 3 * (200 - val_size)
    split = "train" if val_size == 0 else "val"
    assert saved[f"initial/{split}_elbo"] < results["test/elbo"]
    assert ("val/elbo" in saved) == (val_size > 0) and saved["status"] == "completed"
