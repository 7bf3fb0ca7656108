"""The residual cells between latent maps (model/layer_net=latent_map) and the small
convolutional hierarchy built from them (experiment=conv_ladder_mnist): shapes and resizes, a
layer whose units are no map is refused naming the key, the preset trains on MNIST, and vae-eval
reports each layer."""

import csv
import json

import pytest
import torch
from compose import CONF, SHARED_DATA, compose_train

from vae_lightning.args import ArgumentError
from vae_lightning.latent_maps import LatentMap

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("scale, side_out", [(2, 8), (1, 4), (0.5, 2)])
def test_a_map_of_units_becomes_the_next_layer_s_parameters(scale, side_out):
    torch.manual_seed(0)
    out = 2 * 3 * side_out * side_out  # a Gaussian's two parameters for 3 x s x s units
    net = LatentMap((4 * 4 * 4,), (out,), in_channels=4, scale=scale, channels=8)
    assert net.in_map == (4, 4, 4) and net.out_map == (6, side_out, side_out)
    z = torch.randn(5, 7, 64)  # any leading dimensions (samples, batch)
    assert net(z).shape == (5, 7, out)


def test_a_unit_s_parameters_depend_on_its_neighbourhood_only():
    """3x3 convolutions: the stem, two per residual block (one block before the resize, one
    after) and the head reach 1 + 2 + 2 + 1 = 6 cells away, and no further."""
    torch.manual_seed(0)
    net = LatentMap((4 * 8 * 8,), (2 * 4 * 8 * 8,), in_channels=4, scale=1, channels=8)
    z = torch.randn(1, 256, requires_grad=True)
    net(z).reshape(8, 8, 8)[:, 0, 0].sum().backward()
    reach = z.grad.reshape(4, 8, 8).abs().sum(0)
    assert reach[6, 6] > 0 and reach[:, 7].abs().sum() == 0 and reach[7, :].abs().sum() == 0


def test_units_that_are_no_map_are_refused_naming_the_key():
    with pytest.raises(ArgumentError, match="in_channels"):
        LatentMap((60,), (128,), in_channels=4)  # 60 / 4 = 15: not a square
    with pytest.raises(ArgumentError, match="scale"):
        LatentMap((64,), (100,), in_channels=4, scale=2)  # 100 / 64 is no whole channel count


@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(),
                    reason="needs ../shared/data/mnist (the shared data folder)")
def test_the_conv_hierarchy_trains_on_mnist_and_vae_eval_reports_its_layers(tmp_path,
                                                                           monkeypatch):
    from vae_lightning.train import train

    monkeypatch.setenv("VAE_DATA_DIR", str(SHARED_DATA))
    narrow = ["model.encoder.net.channels=[8,16]", "model.decoder.net.channels=[8,16]",
              "model.prior.net.channels=8", "data.batch_size=32"]  # the preset, narrower
    cfg = compose_train(["experiment=conv_ladder_mnist", *narrow, "trainer.max_epochs=1",
                         "+trainer.limit_train_batches=40", "+trainer.limit_val_batches=2",
                         "+trainer.limit_test_batches=2", "trainer.enable_progress_bar=false",
                         "callbacks.figures=null", "logger=csv",
                         "callbacks.bound_curve=null",  # Fig. 2's whole-split bounds: not read
                         "data.val_size=500"],  # the initial bound's split (all of it): smaller
                        output_dir=tmp_path)
    assert cfg.model.latent == 336 and cfg.model.decoder.latent == 256
    train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert losses[-1] < losses[0] - 30  # nats per image, early in the KL warm-up
    from hydra import compose, initialize_config_dir

    from vae_lightning.config import instantiate_node

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ecfg = compose("eval", overrides=[f"ckpt_path={tmp_path}/checkpoints/last.ckpt",
                                          "eval.k=4", "eval.limit=20", f"output_dir={tmp_path}"])
    results = instantiate_node(ecfg.eval, "eval")(ecfg.ckpt_path, ecfg.seed, ecfg.output_dir)
    layers = results["layers"]
    assert json.loads((tmp_path / "eval.json").read_text())["layers"] == layers
    assert [layer["size"] for layer in layers] == [256, 64, 16]
    assert all(layer["kl"] > 0 for layer in layers)
