"""Wake-sleep (model/objective=wake_sleep): each phase updates only its network; its bound is
AEVB's ELBO."""

import json

import pytest
import torch
from compose import compose_train
from models import SHAPE, small_vae

from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import Gaussian
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.wake_sleep import WakeSleep
from vae_lightning.priors import MixtureOfGaussians, StandardNormal
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _model(prior=StandardNormal, **kwargs):
    torch.manual_seed(0)
    return small_vae(SHAPE, latent=3, hidden=(16,), activation="tanh", likelihood=Gaussian(),
                     prior=prior, objective=WakeSleep(**kwargs))


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _touched(grads, prefix):
    return {n for n, g in grads.items() if n.startswith(prefix) and g is not None and g.any()}


def _names(model, prefix):
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("prior", [StandardNormal, MixtureOfGaussians])
def test_wake_updates_only_the_generative_model_and_sleep_only_the_encoder(prior):
    model = _model(prior)
    assert model.method == "wake_sleep"
    x = torch.rand(32, *SHAPE)
    wake = _grads(model, model.objective.wake_loss(model, x)[0])
    assert _touched(wake, "encoder") == set()
    assert _touched(wake, "decoder") == _names(model, "decoder")
    assert _touched(wake, "prior") == _names(model, "prior")  # a learnable prior is generative
    sleep = _grads(model, model.objective.sleep_loss(model, 32))
    assert _touched(sleep, "encoder") == _names(model, "encoder")
    assert _touched(sleep, "decoder") == _touched(sleep, "prior") == set()


def test_one_step_applies_both_phases_to_their_own_networks():
    model = _model()
    x = torch.rand(32, *SHAPE)
    torch.manual_seed(1)
    both = _grads(model, model.objective.loss(model, x)[0])
    torch.manual_seed(1)  # the same draws, phase by phase
    wake = _grads(model, model.objective.wake_loss(model, x)[0])
    sleep = _grads(model, model.objective.sleep_loss(model, 32))
    for name in _names(model, "decoder"):
        torch.testing.assert_close(both[name], wake[name])
    for name in _names(model, "encoder"):
        torch.testing.assert_close(both[name], sleep[name])


def test_sleep_loss_is_minus_log_q_of_fantasies():
    model = _model()
    torch.manual_seed(2)
    loss = model.objective.sleep_loss(model, 64)
    torch.manual_seed(2)
    with torch.no_grad():
        z = model.prior.sample(64)
        x = model.decoder(z).sample()
        expected = -model.encoder(x).log_prob(z).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_the_logged_bound_is_the_aevb_elbo():
    model = _model()
    x = torch.rand(32, *SHAPE)
    torch.manual_seed(3)
    wake_loss, bound = model.objective.wake_loss(model, x)
    torch.manual_seed(3)
    logged = model.bound(x)
    torch.manual_seed(3)
    aevb = ELBO().bound(model, x)  # AEVB's objective on the same parts
    torch.testing.assert_close(bound.elbo, aevb.elbo)
    torch.testing.assert_close(logged.elbo, aevb.elbo)
    torch.testing.assert_close(wake_loss, -aevb.elbo.mean())


def test_wake_sleep_with_a_vamp_prior_is_a_config_error(tmp_path):
    cfg = compose_train(["model/objective=wake_sleep", "model/prior=vamp"], tmp_path)
    with pytest.raises(ConfigError, match="wake-sleep") as err:
        build_run(cfg)
    assert "VampPrior" in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("+model.objective.beta=0.5", "model.objective.beta"),
    ("+model.objective.warmup_steps=10", "model.objective.warmup_steps"),
    ("+model.objective.k=5", "model.objective.k"),
])
def test_settings_wake_sleep_cannot_honour_are_config_errors(override, key, tmp_path):
    cfg = compose_train(["model/objective=wake_sleep", override], tmp_path)
    with pytest.raises(ConfigError, match="WakeSleep") as err:
        build_run(cfg)
    assert key in str(err.value)


def test_wake_sleep_frey_preset_trains_and_improves_the_bound(tmp_path):
    cfg = compose_train(["experiment=wake_sleep_frey", "model.latent=2",
                         "trainer.max_samples=1e4", "logger=none", *QUIET], tmp_path)
    assert cfg.model.objective._target_.endswith("WakeSleep")
    assert (cfg.model.optimizer.lr, cfg.data.scale, cfg.model.encoder.net.hidden) == (
        0.01, 256, [200])
    run = build_run(cfg)
    model, datamodule = run.model, run.datamodule
    assert isinstance(model.objective, WakeSleep) and model.method == "wake_sleep"
    datamodule.setup("test")
    with torch.no_grad():  # the bound of the untrained model
        untrained = model.bound(datamodule.evaluation_data("test")).elbo.mean().item()
    results = train(cfg)
    assert results["method"] == "wake_sleep" and 10000 <= results["train_samples_seen"] < 10100
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert curve["method"] == "wake_sleep"
    # nats: about -530 to above 500 (1e4 samples: about +550, a margin of ~575 nats over the 500)
    assert curve["points"][-1]["test/elbo"] > untrained + 500
