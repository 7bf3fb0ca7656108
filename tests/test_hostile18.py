"""Hostile round eighteen (/work/notes/hostile18.md): vae-export's OUT (a directory, a run's
training checkpoint), counters beyond int64 in a checkpoint and in eval.json, I(x; z)'s closed
form at extreme scales, and the sweep check's refusal of interpolated defaults outside the
model. Each test fails on the code before its fix."""

import json
import os

import pytest
import torch
from compose import compose_train, mnist_like
from omegaconf import OmegaConf
from torch.distributions import Independent, Normal

from vae_lightning import export, sweeps
from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.errors import CheckpointError, ConfigError
from vae_lightning.log_likelihood import pairwise_log_prob
from vae_lightning.reports import compare
from vae_lightning.train import train

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures=null", "callbacks.bound_curve=null"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 30-step run on small MNIST-format files (its last.ckpt and a best-epochN.ckpt)."""
    root = mnist_like(tmp_path_factory.mktemp("data"))
    directory = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    train(compose_train(["data=mnist", f"data.root={root}", "data.val_size=50",
                         "trainer.max_steps=30", *QUIET], directory))
    return directory


def test_export_refuses_a_directory_as_out_even_with_force(run, tmp_path, capsys):
    """OUT a directory named *.ckpt with --force: an IsADirectoryError traceback (exit 1)."""
    out = tmp_path / "model.ckpt"
    out.mkdir()
    (out / "mine").write_text("kept")
    for force in ([], ["--force"]):
        assert export.main([str(run), str(out), *force]) == 2
        err = capsys.readouterr().err
        assert "is a directory" in err and "Traceback" not in err
    assert (out / "mine").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # no temporary left


def test_export_never_writes_over_a_training_checkpoint(run, tmp_path, capsys):
    """vae-export <run>/checkpoints/best-*.ckpt <run>/checkpoints/last.ckpt --force replaced
    the run's last.ckpt by an export: its optimizer state gone, the run no longer resumable.
    Refused, as through a hard link to it; a plain file is still replaced with --force."""
    checkpoints = run / "checkpoints"
    last = checkpoints / "last.ckpt"
    best = next(checkpoints.glob("best-*.ckpt"))
    before = last.read_bytes()
    link = tmp_path / "link.ckpt"
    os.link(last, link)
    for out in (last, link):
        assert export.main([str(best), str(out), "--force"]) == 2, out
        err = capsys.readouterr().err
        assert "is a training checkpoint" in err and "--force" in err, err
    assert last.read_bytes() == before and "optimizer_states" in read_checkpoint(last)
    assert os.stat(link).st_ino == os.stat(last).st_ino
    mine = tmp_path / "mine.ckpt"
    mine.write_bytes(b"an older export")
    assert export.main([str(best), str(mine), "--force"]) == 0
    # An export (no optimizer state) is itself replaced with --force.
    assert export.main([str(last), str(mine), "--force"]) == 0


def test_a_counter_beyond_int64_in_a_checkpoint_is_refused(run, tmp_path, capsys):
    """samples_seen = 10**400 was exported (and evaluated into eval.json): refused on reading,
    naming the key and what is accepted, nothing written."""
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    checkpoint["samples_seen"] = 10**400
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    with pytest.raises(CheckpointError, match=r"samples_seen is an integer of \d+ bits, not an "
                                              r"integer from 0 to 2\*\*63 - 1"):
        read_checkpoint(crafted)
    assert export.main([str(crafted), str(tmp_path / "out.ckpt")]) == 2
    assert "samples_seen" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()


def _evaluation(seen):
    return {"split": "test", "k": 5, "n": 3, "bound_of": None,
            "iw": {"nats": -90.0, "nats_se": 1.0}, "elbo": {"nats": -95.0, "nats_se": 1.0},
            "per_point": {"iw": [-89.0, -90.0, -91.0], "elbo": [-94.0, -95.0, -96.0]},
            "points": {"split_sha256": "a", "binarize": "none"}, "train_samples_seen": seen}


def test_compare_refuses_a_train_samples_seen_beyond_int64(tmp_path, capsys):
    """eval.json's train_samples_seen = 10**400: an OverflowError traceback in the table."""
    (tmp_path / "a.json").write_text(json.dumps(_evaluation(2250)))
    (tmp_path / "b.json").write_text(json.dumps(_evaluation(10**400)))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "train_samples_seen" in err and "2**63 - 1" in err
    (tmp_path / "b.json").write_text(json.dumps(_evaluation(2**63 - 1)))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0


@pytest.mark.parametrize("mean, sigma, d", [(30.0, 1e-6, 8), (1e3, 1e-3, 32), (0.0, 1e6, 8),
                                            (5.0, 0.05, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pairwise_log_prob_matches_the_broadcast_at_extreme_scales(mean, sigma, d, dtype):
    """The closed form expanded (z - m)^2 / s^2 into terms of (m / s)^2, which cancelled to
    2.2 nats of error at m = 30, s = 1e-6 (float64): centred first, it is the broadcast
    float64 log_prob to 1e-9 nats."""
    if dtype == torch.float16 and sigma * 4.5 > torch.finfo(dtype).max:
        pytest.skip("the scale is infinite in float16")
    torch.manual_seed(0)
    loc = (mean + torch.randn(6, d) * sigma * 3).to(dtype)
    scale = (torch.full((6, d), sigma) * torch.rand(6, d).add(0.5)).to(dtype)
    z = Independent(Normal(loc.double(), scale.double()), 1).sample()
    found = pairwise_log_prob(Independent(Normal(loc, scale), 1), z)
    exact = Independent(Normal(loc.double(), scale.double()), 1).log_prob(z[:, None, :])
    assert found.dtype == torch.float64
    assert torch.allclose(found, exact, rtol=1e-12, atol=1e-9), (found - exact).abs().max()


def _sweep(task):
    return OmegaConf.create({
        "hydra": {"overrides": {"task": task}, "sweeper": {}}, "seed": 0,
        "data": {"seed": "${seed}", "root": "${oc.env:VAE_DATA_DIR,data}"},
        "model": {"latent": 5, "decoder": {"latent": "${..latent}"}}})


@pytest.mark.parametrize("task", [["data.seed=1,2"], ["data.root=/a,/b"],
                                  ["data.seed=range(3)", "model=vae,iwae"]])
def test_a_sweep_of_an_interpolated_default_outside_the_model_is_not_refused(task):
    """-m data.seed=1,2 (data.seed is ${seed}) and data.root=/a,/b (an ${oc.env:...}) were
    refused as keys 'this model composes from other keys': nothing checks them against others."""
    sweeps.check_search_space(_sweep(task))


def test_a_sweep_of_a_key_the_model_composes_is_still_refused():
    with pytest.raises(ConfigError, match=r"The sweep varies model\.decoder\.latent"):
        sweeps.check_search_space(_sweep(["data.seed=1,2", "model.decoder.latent=3,4"]))


def test_export_says_when_out_s_folder_is_a_file(run, tmp_path, capsys):
    """OUT=<a file>/x.ckpt: 'its folder ... does not exist' of a file that exists."""
    (tmp_path / "f").write_text("")
    assert export.main([str(run), str(tmp_path / "f" / "x.ckpt")]) == 2
    assert "its folder" in (err := capsys.readouterr().err) and "is not a folder" in err
