"""Hostile round seventeen (/work/notes/hostile17.md): each test fails on the code before
its fix."""

from __future__ import annotations

import functools
import json
import math
import signal

import numpy as np
import pytest
import torch
from compose import compose_train, counts_data
from omegaconf import OmegaConf
from test_hostile import TINY, no_traceback, run

from vae_lightning import cli, rundir
from vae_lightning.conditional import Conditioned
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import NegativeBinomial
from vae_lightning.nets import MLP
from vae_lightning.train import build_run

ONE_STEP = ["trainer.max_steps=1", "callbacks.figures=null"]


def test_a_negative_binomial_whose_log_probability_float64_cannot_form_is_refused():
    """max_log_theta took up to 80, but log Gamma(k + theta) - log Gamma(theta) is lost in
    float64's rounding of the two terms (about theta log theta) beyond theta = e^25: at e^40
    log p(k) of a mean of 10 was off by hundreds of nats (+224 at k = 20: a positive
    log-probability), silently. Now refused naming the key and the range; at the largest value
    allowed, the distribution is the Poisson it tends to, to 1e-4 nats."""
    with pytest.raises(ValueError, match=r"max_log_theta=40 is not allowed: expected a number "
                                         r"> 0 and <= 25"):
        NegativeBinomial(max_log_theta=40)
    k = torch.arange(0, 60, dtype=torch.float32).view(1, 1, -1)
    params = torch.stack([torch.full((1, 60), math.log(10.0)), torch.full((1, 60), 100.0)])
    log_p = NegativeBinomial(max_log_theta=25)(params.view(2, 1, 60)).base_dist.log_prob(k)
    poisson = torch.distributions.Poisson(torch.tensor(10.0, dtype=torch.float64))
    assert torch.allclose(log_p.double(), poisson.log_prob(k.double()), atol=1e-4, rtol=0)


def _real_vectors(tmp_path, name, make):
    """data=array on 200 real-valued vectors of 12 (``make(x, val_rows)`` edits them, given the
    rows of the validation split, which depend on the number of vectors only)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)).astype(np.float32)
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x)
    overrides = ["data=array", f"data.path={path}", "model/likelihood=gaussian",
                 "model.decoder.likelihood.mean_activation=identity"]
    datamodule = build_run(compose_train(overrides, tmp_path / "probe")).datamodule
    datamodule.setup("fit")
    make(x, datamodule.evaluation_rows("val"))
    np.savez(path, x=x)
    return overrides


def test_a_model_that_cannot_score_a_validation_point_untrained_is_refused_before_training(
        tmp_path, monkeypatch, capsys):
    """A validation vector holding 1e20 (finite in float32, so accepted; or a count of 2^24 read
    by an MLP encoder) had an untrained bound of -inf: the run trained its whole length and
    ended 'diverged ... b0 = -inf ... Lower model.optimizer.lr', exit 4, advice that cannot
    help. Now refused before the first step (exit 2), naming the split, the point and its row."""
    def huge(x, val_rows):
        x[val_rows[3], 5] = 1e20

    data = _real_vectors(tmp_path, "huge", huge)
    result = run(cli.train, [*TINY, *data, *ONE_STEP, f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result.err[-2000:]
    assert "error: The untrained model's bound on the val split is not finite" in result.err
    assert "its point 3 (row " in result.err and "Nothing was trained" in result.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_log_input_on_values_at_or_below_minus_one_is_refused_naming_the_key(
        tmp_path, monkeypatch, capsys):
    """model.encoder.net.log_input=true on real-valued vectors (values below -1): log(1 + x) is
    NaN there, and the run stopped at its first step telling to look at the data's scale. Now
    refused before training, naming the key and the value."""
    data = _real_vectors(tmp_path, "real", lambda x, rows: None)
    result = run(cli.train, [*TINY, *data, *ONE_STEP, "model.encoder.net.log_input=true",
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result.err[-2000:]
    assert result.err.startswith("error: model.encoder.net.log_input=true has the encoder read "
                                 "log(1 + x), which is not defined where x <= -1"), result.err


def test_a_conditional_encoder_reads_log_one_plus_x_of_the_data_not_of_the_condition():
    """model=cvae with data.condition and model.encoder.net.log_input=true: the MLP took
    log(1 + .) of the data and the condition vector concatenated, so a condition below -1 was
    NaN (15 of 20 validation points, standard normal conditions x 3) and others were bent.
    Now log(1 + x) of the data only; c(y) is given as it is."""
    torch.manual_seed(0)
    net = functools.partial(MLP, hidden=[5], log_input=True)
    part = Conditioned((1, 1, 4), (3,), net, classes=2)
    x = torch.tensor([[[[0.0, 3.0, 10.0, 1.0]]], [[[2.0, 0.0, 0.0, 5.0]]]])
    y = torch.tensor([[-2.0, 0.5], [1.5, -7.0]])
    part.given(y)
    out = part(x)
    expected = torch.nn.Sequential.forward(part.net, torch.cat([x.flatten(-3).log1p(), y], -1))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, expected)


def test_a_decoder_latent_other_than_z_s_is_refused_before_training(tmp_path, monkeypatch,
                                                                     capsys):
    """model.decoder.latent=3 with model.latent=2 was a RuntimeError traceback ('mat1 and mat2
    shapes cannot be multiplied'), exit 1, at the first step, and in a search every trial so;
    model.decoder.latent=1 trained a decoder that ignored the last unit of z, silently (the
    encoder's and the prior's latent were checked, the decoder's not)."""
    for latent in (3, 1):
        result = run(cli.train, [*TINY, *counts_data(tmp_path), "model/likelihood=poisson",
                                 *ONE_STEP, f"model.decoder.latent={latent}",
                                 f"hydra.run.dir={tmp_path / f'run{latent}'}"],
                     monkeypatch, capsys, tmp_path)
        no_traceback(result)
        assert result.code == 2, result.err[-2000:]
        assert f"model.decoder.latent={latent}: the decoder reads z, of 2 units" in result.err


def test_a_run_stopped_with_lightning_s_own_checkpoints_is_not_run_again_over_them(tmp_path):
    """callbacks=none leaves checkpointing to Lightning, which writes
    <run>/csv/checkpoints/epoch=...ckpt. A run stopped by SIGTERM there said 'before the first
    checkpoint, so there is nothing to resume ... Run it again', and (results.json 'interrupted',
    no <run>/checkpoints: rundir.NOTHING_TO_RESUME) the same command ran afresh over it: its
    metrics.csv of 1555 rows replaced by 18. Now the directory is a run, the message names the
    newest checkpoint and a resume into the run's own directory, which is accepted."""
    directory = tmp_path / "run"
    saved = directory / "csv" / "checkpoints" / "epoch=3-step=8.ckpt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"")
    (directory / "results.json").write_text(json.dumps({"status": "interrupted"}))
    assert rundir.is_run(directory)
    rundir.refuse_into(directory, str(saved))  # its own checkpoint: a resume there goes on
    other = tmp_path / "other" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="holds another run"):
        rundir.refuse_into(directory, str(other))
    from vae_lightning.train import _interrupted

    message = str(_interrupted(OmegaConf.create({"output_dir": str(directory)}), None,
                               signal.SIGTERM))
    assert "nothing to resume" not in message and str(saved) in message
    assert f"hydra.run.dir={directory}" in message and "ckpt_path=" in message
    (directory / "csv" / "checkpoints" / saved.name).unlink()  # none left: run again afresh
    assert not rundir.is_run(directory)
