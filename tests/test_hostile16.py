"""Hostile round sixteen (/work/notes/hostile16.md): each test fails on the code before its fix."""

from __future__ import annotations

import pytest
import torch
from test_hierarchy import _model as linear_gaussian_hierarchy
from test_hierarchy import data as hierarchy_data
from test_hostile import TINY, no_traceback, run

from vae_lightning import cli
from vae_lightning.log_likelihood import posterior_kl
from vae_lightning.posteriors.hierarchy import layer_kls
from vae_lightning.posteriors.vq import VectorQuantizer

GUMBEL = ["model=gumbel", "model.latent=10", "trainer.max_steps=1"]


@pytest.mark.parametrize("override, words", [
    ("model.encoder.posterior.anneal_rate=-1", "anneal_rate=-1 is not allowed: expected a "
                                               "number >= 0"),
    ("model.encoder.posterior.temperature=1e39", "temperature=1e+39 is not allowed"),
], ids=["negative-anneal-rate", "temperature-beyond-float32"])
def test_a_relaxed_categorical_temperature_that_cannot_be_trained_is_refused_before_training(
        override, words, tmp_path, monkeypatch, capsys):
    """model=gumbel's anneal_rate was any number: a negative one raised tau without bound until
    exp(-r t) overflowed, an OverflowError traceback at step 710 (r = -1), after the minutes of
    training before it; a temperature beyond float32's range was a RuntimeError traceback at the
    first step. Now one line naming the key, exit 2, before anything is trained."""
    result = run(cli.train, [*TINY, *GUMBEL, override, f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result.err[-2000:]
    assert result.err.startswith("error: ") and words in result.err, result.err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("code_dim, ema", [(1, True), (2, False)])
def test_vq_codes_under_bf16_autocast_are_the_nearest_codes(code_dim, ema):
    """Under trainer.precision=bf16-mixed the quantizer's distances ||v||^2 - 2 v.e + ||e||^2
    took their middle term from a matmul that autocast runs in bfloat16: the terms cancelled to
    noise, and a quarter of the vectors of a 2-d codebook of 512 (84 % at code_dim 1) got a code
    that is not their nearest, silently. Now the codes are float32's, as in evaluation."""
    torch.manual_seed(0)
    family = VectorQuantizer(codes=512, code_dim=code_dim, ema=ema)
    layer = torch.nn.Linear(code_dim, code_dim)
    with torch.no_grad():
        family.start(layer(torch.randn(2048, code_dim)))
    book = family.codebook.detach().clone()
    x = torch.randn(2048, code_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        params = layer(x).float()  # as the model's Encoder.params hands them to the family
        q = family.train()(params)
    family.codebook.data.copy_(book)  # the codes were chosen before the moving averages moved
    with torch.no_grad():
        exact = family.nearest(params.detach().float())
    assert torch.equal(q.codes.reshape(-1), exact.reshape(-1))


OPTUNA = ["hparams_search=optuna", "hydra.sweeper.n_trials=1", "trainer.max_steps=1"]


@pytest.mark.parametrize("override, words", [
    ("hydra.sweeper.direction=maximise", "hydra.sweeper.direction='maximise' is not allowed"),
    ("hydra.sweeper.direction=[maximize,minimize]", "direction=['maximize', 'minimize']"),
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0 is not allowed: a whole number >= 1"),
    ("hydra.sweeper.n_trials=-1", "hydra.sweeper.n_trials=-1 is not allowed"),
    ("hydra.sweeper.max_failure_rate=1.5", "hydra.sweeper.max_failure_rate=1.5 is not allowed"),
    ("optimized_metric=val/bits_per_dim", "hydra.sweeper.direction=maximize is not allowed with "
                                          "optimized_metric=val/bits_per_dim, which is better "
                                          "lower"),
], ids=["misspelt-direction", "two-directions", "no-jobs", "negative-trials", "rate-above-1",
        "maximised-bits-per-dim"])
def test_optuna_sweeper_settings_it_fails_on_are_refused_before_the_study(
        override, words, tmp_path, monkeypatch, capsys):
    """Hydra's Optuna sweeper took these and then failed: a direction other than minimize /
    maximize and n_jobs=0 in a traceback (exit 1), two directions by training every trial and
    recording each as failed (one number is not two; exit 0, no best trial), n_trials=-1 as
    "no trial of the search completed (each failed ...)" (exit 5, no trial ran), and
    max_failure_rate=1.5 as a bare AssertionError; optimized_metric=val/bits_per_dim with the
    default direction maximize searched for the worst model and reported it as the best. Now
    one line naming the key, exit 2, before any trial."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    result = run(cli.train, [*TINY, *OPTUNA, override, f"hydra.sweep.dir={sweep}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 2, result.err[-2000:]
    no_traceback(result)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.err
    assert not sweep.exists() or not any(p.is_dir() for p in sweep.iterdir())


def test_the_layer_kls_vae_eval_reports_add_up_to_the_kl_reported_above_them():
    """vae-eval prints KL(q || p) (16 draws per point, in a forked random stream) and, for
    stochastic layers, each layer's KL beneath it; the layers' were one other draw per point,
    from the evaluation's own stream: they did not add up to the KL above them (0.57 + 0.03
    under 0.51 nats on 200 Frey faces; a layer's "KL -0.01 nats" on 20), and they moved the
    draws of the bounds of the batches after. Now the same draws as the KL, in its stream."""
    model, x = linear_gaussian_hierarchy(exact=False), hierarchy_data()
    q, p = model.encoder(x), model.prior.distribution()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    with torch.no_grad():
        layers = layer_kls(q, p)
        assert torch.equal(torch.get_rng_state(), state)
        total = posterior_kl(q, p, torch.device("cpu"))
    assert layers.shape == (2, len(x))
    torch.testing.assert_close(layers.sum(0), total, rtol=1e-5, atol=1e-5)


def test_no_manifold_figure_of_a_2_d_latent_space_of_one_hot_codes(tmp_path, monkeypatch,
                                                                    capsys):
    """model=gumbel with one block of 2 categories has a 2-d latent space of two one-hot codes
    (relaxed to the segment between them in training); the figures drew its "Learned 2-d
    manifold" on a Gaussian grid over the whole plane, points like (-1.96, 1.96) its decoder
    never reads. Traversals of such a space are refused; its manifold is now left out."""
    run_dir = tmp_path / "run"
    result = run(cli.train, [*TINY, *GUMBEL, "model.latent=2",
                             "model.encoder.posterior.categories=2", f"hydra.run.dir={run_dir}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-2000:]
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert "samples.png" in figures and "manifold.png" not in figures, figures


def test_a_resumed_optuna_study_draws_new_trials(tmp_path, monkeypatch, capsys):
    """The docs: run the same search command with the same hydra.sweep.dir to add trials to the
    study. The sampler was seeded with ${seed} each time, so the added trials drew the first
    trials' parameters again (trial 2 = trial 0, 3 = 1: the same runs, trained twice). Now its
    seed counts the trials the study holds; a new study's trials are those of ${seed} still."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    args = [*(a for a in TINY if not a.startswith("model.latent=")),  # the search's
            "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.max_steps=1",
            f"hydra.sweep.dir={sweep}"]
    for _ in range(2):
        result = run(cli.train, args, monkeypatch, capsys, tmp_path)
        assert result.code == 0, result.err[-2000:]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="vae", storage=f"sqlite:///{sweep / 'optuna.db'}")
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(params) == 4 and len(set(params)) == 4, params


def test_a_fitted_sampler_is_refused_for_a_prior_per_class(tmp_path):
    """model=cvae model/prior=class_normal: p(z|y) is one Gaussian per class. vae-sample
    sampler=gmm fitted one mixture to the posterior locations of all classes pooled and decoded
    its draws given the classes in turn: "class 0" images from class 1's z, silently. Now
    refused before any fit (exit code 2), naming sampler=prior."""
    import numpy as np
    from compose import compose_train, sample_config

    from vae_lightning.errors import ConfigError
    from vae_lightning.train import train

    path = tmp_path / "xy.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((40, 8, 8), dtype=np.float32), t=np.arange(40) % 2)
    checkpoint = train(compose_train([
        "data=array", f"data.path={path}", "data.labels_key=t", "data.batch_size=10",
        "model=cvae", "model/prior=class_normal", "model.classes=2", "model.latent=2",
        "model.encoder.net.hidden=[4]", "model.decoder.net.hidden=[4]", "trainer.max_steps=2",
        "trainer.accelerator=cpu", "logger=none", "callbacks.bound_curve=null",
        "callbacks.figures.n_points=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false"], tmp_path / "run"))["checkpoint"]
    refused = r"sampler=gmm: the prior of the model of .* is p\(z\|y\)"
    with pytest.raises(ConfigError, match=refused):
        sample_config([f"ckpt_path={checkpoint}", "n=2", "device=cpu", "sampler=gmm",
                       f"data_path={path}", "samplers.gmm.n_components=1",
                       f"output_dir={tmp_path / 'out'}"])()
    assert not list(tmp_path.glob("run/checkpoints/*.gmm.pt"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_vae_compare_pairs_evaluations_of_binarized_points_at_other_seeds(tmp_path, capsys):
    """vae-compare refused two evaluations of dynamically binarized data made with other
    vae-eval seeds ("its seed (which draws the binarized pixels) is 1, there 0"), but the seed
    draws z only: val and test are binarized by one fixed draw, the same points in every
    evaluation (checked here on the data module: the same pixels whatever torch's seed). The
    k = 5000 evaluation of one of them had to be made again for nothing."""
    import json

    import numpy as np
    from compose import compose_train

    from vae_lightning.config import instantiate_node
    from vae_lightning.reports import compare

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((60, 4, 4), dtype=np.float32))
    dm = instantiate_node(compose_train(["data=array", f"data.path={path}",
                                         "data.binarize=dynamic"], tmp_path / "c").data, "data")
    dm.setup("test")
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        draws.append(torch.cat([x for x, _ in dm.evaluation_batches("test", 4)]))
    assert torch.equal(*draws)

    per_point = {"iw": [-1.0, -2.0, -3.0], "elbo": [-1.5, -2.5, -3.5]}
    for seed in (0, 1):
        evaluation = {"split": "test", "k": 5000, "n": 3, "seed": seed, "bound_of": "log p(x)",
                      "iw": {"nats": -2.0, "nats_se": 0.5}, "elbo": {"nats": -2.5,
                                                                     "nats_se": 0.5},
                      "per_point": {k: [v - seed for v in vs] for k, vs in per_point.items()},
                      "points": {"split_sha256": "0" * 64, "binarize": "dynamic"}}
        (tmp_path / f"eval{seed}.json").write_text(json.dumps(evaluation))
    capsys.readouterr()
    assert compare.main([str(tmp_path / "eval0.json"), str(tmp_path / "eval1.json")]) == 0, \
        capsys.readouterr().err
    assert "-1.00 ± 0.00" in capsys.readouterr().out


def test_vae_compare_refuses_an_evaluation_of_no_points_in_one_line(tmp_path, capsys):
    """An eval.json (an untrusted file) with n = 0 and empty per-point lists passed vae-compare's
    checks (n "an integer >= 0"), then its paired mean divided by zero: a ZeroDivisionError
    traceback. Now one error line naming the file and n, exit 2."""
    import json

    from vae_lightning.reports import compare

    evaluation = {"split": "test", "k": 2, "n": 0, "bound_of": "log p(x)",
                  "iw": {"nats": None, "nats_se": None}, "elbo": {"nats": None, "nats_se": None},
                  "per_point": {"iw": [], "elbo": []},
                  "points": {"split_sha256": "0" * 64, "binarize": "none"}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(evaluation))
    capsys.readouterr()
    assert compare.main([str(path), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "n=0" in err, err


def test_the_optuna_plugin_s_own_default_direction_passes_the_sweeper_check(tmp_path):
    """hydra/sweeper=optuna without hparams_search: the plugin's structured default direction is
    its enum (Direction.minimize), not a string; the check of finding 3 takes it by name."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from compose import CONF
    from hydra import compose, initialize_config_dir

    from vae_lightning import sweeps

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweeper = compose("train", overrides=["hydra/sweeper=optuna"],
                          return_hydra_config=True).hydra.sweeper
    assert not isinstance(sweeper.direction, str)
    sweeps.check_sweeper(sweeper, "val/kl")
