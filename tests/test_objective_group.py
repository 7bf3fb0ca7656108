"""The objectives of issue 26 as options of ``model/objective``: each runs a fast_dev_run from its
YAML (one through vae-train's entry point as a user types it), each paper preset under
``experiment/`` composes and passes the config check, and (slow) each trains on Frey Face so
that the true ELBO rises."""

import pytest
from compose import compose_train

from vae_lightning.config_checks import check
from vae_lightning.train import train

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures=null"]
TINY = ["model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]"]
# Each new option, with what keeps its check small (the YAML's other settings stand).
OPTIONS = {
    "beta_tc": [], "capacity": [], "dip_vae_i": [], "dip_vae_ii": [], "info_vae": [], "wae": [],
    "factor_vae": ["model.objective.hidden=[16,16]"],
    "miwae": ["model.objective.m=2", "model.objective.k=3"],
    "piwae": ["model.objective.m=2", "model.objective.k=3"],
    "ciwae": ["model.objective.k=4"],
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_runs_a_fast_dev_run(option, tmp_path):
    cfg = compose_train([f"model/objective={option}", "trainer.fast_dev_run=true", *TINY,
                         *QUIET, *OPTIONS[option]], tmp_path)
    results = train(cfg)
    assert results["objective"] == option and results["steps"] == 1
    assert all(results[f"{stage}/elbo"] < 0 for stage in ("train", "val", "test"))


def test_a_fast_dev_run_with_a_cyclical_kl_schedule(tmp_path):
    cfg = compose_train(["model/objective=dip_vae_ii", "model/objective/kl_schedule=cyclical",
                         "model.objective.kl_schedule.total_steps=8", "trainer.fast_dev_run=true",
                         *TINY, *QUIET], tmp_path)
    assert train(cfg)["steps"] == 1


def test_factor_vae_runs_from_the_command_line(tmp_path, monkeypatch, capsys):
    """The first objective with its own parameters and optimizer, as a user starts it (vae-train's
    entry point, in this process)."""
    from test_hostile import run

    from vae_lightning import cli

    result = run(cli.train, ["model/objective=factor_vae", "trainer.fast_dev_run=true", *TINY,
                             *QUIET], monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-2000:]
    assert "debug run (trainer.fast_dev_run)" in result.out and "error" not in result.err


PRESETS = {
    "beta_tc_dsprites": ("beta_tc", {"beta": 6.0, "estimator": "mss"}),
    "capacity_dsprites": ("capacity", {"gamma": 1000.0, "capacity": 25.0}),
    "dip_vae_dsprites": ("dip_vae_i", {"lambda_od": 10.0, "lambda_d": 100.0}),
    "factor_vae_dsprites": ("factor_vae", {"gamma": 40.0}),
    "wae_mnist": ("wae", {"lam": 10.0, "kernel": "imq", "deterministic": True}),
    "miwae_mnist": ("miwae", {"m": 8, "k": 8}),
    "piwae_mnist": ("piwae", {"m": 8, "k": 8}),
    "ciwae_mnist": ("ciwae", {"k": 64, "beta": 0.05}),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_paper_preset_composes_and_checks(preset, tmp_path):
    cfg = compose_train([f"experiment={preset}"], tmp_path)
    check(cfg)
    option, settings = PRESETS[preset]
    assert cfg.model.objective._target_ == compose_train(
        [f"model/objective={option}"], tmp_path).model.objective._target_
    assert {key: cfg.model.objective[key] for key in settings} == settings


@pytest.mark.slow
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_trains_on_real_data(option, tmp_path):
    """Two epochs on Frey Face: the test ELBO above the initial model's validation ELBO."""
    settings = {"capacity": ["model.objective.gamma=10", "model.objective.capacity=5",
                             "model.objective.capacity_steps=0"]}.get(option, OPTIONS[option])
    cfg = compose_train([f"model/objective={option}", "model.latent=2", "trainer.max_epochs=2",
                         *QUIET, *settings], tmp_path)
    results = train(cfg)
    assert results["objective"] == option and results["status"] == "completed"
    assert results["test/elbo"] > results["initial/val_elbo"]


@pytest.mark.parametrize("option, terms", [("beta_tc", ("mi", "tc", "dwkl")),
                                           ("dip_vae_i", ("dip_offdiag", "dip_diag")),
                                           ("capacity", ("capacity",))])
def test_an_objectives_own_terms_are_logged_beside_the_loss(option, terms, tmp_path):
    """Objective.logged: each named term of the loss reaches the loggers as train/<name>, on the
    steps train/loss is written, without a line for it in the module."""
    import csv
    import math

    cfg = compose_train([f"model/objective={option}", "trainer.max_epochs=1",
                         "trainer.limit_train_batches=4", "trainer.log_every_n_steps=2",
                         "logger=csv", "trainer.enable_progress_bar=false",
                         "trainer.enable_model_summary=false", "callbacks.figures=null",
                         "callbacks.bound_curve=null", *TINY], tmp_path)
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    logged = [row for row in rows if row.get("train/loss")]
    assert len(logged) == 2
    for row in logged:
        for name in terms:
            assert math.isfinite(float(row[f"train/{name}"])), (name, row)
