"""Wake-sleep (model=wake_sleep): each phase updates only its network; its bound is AEVB's ELBO."""

import json

import pytest
import torch
from compose import compose_train

from vae_lightning.config import ConfigError
from vae_lightning.likelihoods import Gaussian
from vae_lightning.priors import MixtureOfGaussians
from vae_lightning.train import build, train
from vae_lightning.wake_sleep import WakeSleep

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _model(**kwargs):
    torch.manual_seed(0)
    return WakeSleep(input_dim=12, latent=3, encoder_hidden=[16], decoder_hidden=[16],
                     activation="tanh", likelihood=Gaussian(), **kwargs)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _touched(grads, prefix):
    return {n for n, g in grads.items() if n.startswith(prefix) and g is not None and g.any()}


def _names(model, prefix):
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("prior", [None, MixtureOfGaussians])
def test_wake_updates_only_the_generative_model_and_sleep_only_the_encoder(prior):
    model = _model(**({"prior": prior, "kl": "mc"} if prior else {}))
    x = torch.rand(32, 12)
    wake = _grads(model, model.wake_loss(x)[0])
    assert _touched(wake, "encoder") == set()
    assert _touched(wake, "decoder") == _names(model, "decoder")
    assert _touched(wake, "prior") == _names(model, "prior")  # a learnable prior is generative
    sleep = _grads(model, model.sleep_loss(32))
    assert _touched(sleep, "encoder") == _names(model, "encoder")
    assert _touched(sleep, "decoder") == _touched(sleep, "prior") == set()


def test_one_step_applies_both_phases_to_their_own_networks():
    model = _model()
    x = torch.rand(32, 12)
    torch.manual_seed(1)
    both = _grads(model, model.training_loss(x)[0])
    torch.manual_seed(1)  # the same draws, phase by phase
    wake = _grads(model, model.wake_loss(x)[0])
    sleep = _grads(model, model.sleep_loss(32))
    for name in _names(model, "decoder"):
        torch.testing.assert_close(both[name], wake[name])
    for name in _names(model, "encoder"):
        torch.testing.assert_close(both[name], sleep[name])


def test_sleep_loss_is_minus_log_q_of_fantasies():
    model = _model()
    torch.manual_seed(2)
    loss = model.sleep_loss(64)
    torch.manual_seed(2)
    with torch.no_grad():
        z = model.prior.sample(64)
        x = model.decoder(z).sample()
        expected = -model.encoder(x).log_prob(z).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_the_logged_bound_is_the_aevb_elbo():
    model = _model()
    x = torch.rand(32, 12)
    torch.manual_seed(3)
    wake_loss, bound = model.wake_loss(x)
    torch.manual_seed(3)
    aevb = model.bound(x)
    torch.testing.assert_close(bound.elbo, aevb.elbo)
    torch.testing.assert_close(wake_loss, -aevb.elbo.mean())


@pytest.mark.parametrize("overrides, word", [
    (["prior=vamp", "model.kl=mc"], "prior=vamp"),
    (["model.objective=iwae", "model.k=5"], "model.objective='iwae'"),
    (["model.beta=0.5"], "model.beta=0.5"),
    (["model.kl_warmup_steps=10"], "model.kl_warmup_steps=10"),
])
def test_settings_wake_sleep_cannot_honour_are_config_errors(overrides, word, tmp_path):
    cfg = compose_train(["model=wake_sleep", *overrides], tmp_path)
    with pytest.raises(ConfigError, match="wake-sleep") as err:
        build(cfg)
    assert word in str(err.value)


def test_wake_sleep_frey_preset_trains_and_improves_the_bound(tmp_path):
    cfg = compose_train(["experiment=wake_sleep_frey", "model.latent=2",
                         "trainer.max_samples=2e4", "logger=none", *QUIET], tmp_path)
    assert cfg.model._target_ == "vae_lightning.wake_sleep.WakeSleep"
    assert (cfg.optimizer.lr, cfg.data.scale, cfg.model.encoder_hidden) == (0.01, 256, [200])
    model = build(cfg).model
    datamodule = build(cfg).datamodule
    datamodule.setup("test")
    with torch.no_grad():  # the bound of the untrained model
        untrained = model.bound(datamodule.evaluation_data("test")).elbo.mean().item()
    results = train(cfg)
    assert results["method"] == "wake_sleep" and 20000 <= results["train_samples_seen"] < 20100
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert curve["method"] == "wake_sleep"
    assert curve["points"][-1]["test/elbo"] > untrained + 500  # nats: about -530 to above 500
