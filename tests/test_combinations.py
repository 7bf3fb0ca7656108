"""Every prior x likelihood x posterior option in conf/ builds a VAE that trains a step, and
composes into a valid training config (analytic KL only where the prior has one)."""

import itertools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import vae_lightning.config  # noqa: F401  (registers the model schema before composing)
from vae_lightning.config import ConfigError, validate
from vae_lightning.module import VAE

CONF = Path(__file__).resolve().parents[1] / "src" / "vae_lightning" / "conf"
GROUPS = ("prior", "likelihood", "posterior")
OPTIONS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in GROUPS}
COMBINATIONS = list(itertools.product(*OPTIONS.values()))


@pytest.fixture(scope="module")
def frey_batch(tmp_path_factory):
    """A real Frey Face batch: float32 [16, 560] in [0, 1]."""
    try:
        from vae_lightning.data import FreyFaceDataModule
    except ImportError as err:
        pytest.skip(f"vae_lightning.data.FreyFaceDataModule is not importable: {err}")
    dm = FreyFaceDataModule(root=tmp_path_factory.mktemp("data"), batch_size=16)
    dm.setup("fit")
    x, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.dtype == torch.float32 and x.shape == (16, 560) and 0 <= x.min() <= x.max() <= 1
    return x


@pytest.fixture(scope="module")
def mnist_like_batch():
    """An MNIST-like binary batch: [16, 784] of 0s and 1s."""
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((16, 784), 0.3), generator=g)


def _build(prior, likelihood, posterior, input_dim):
    factories = {g: instantiate(OmegaConf.load(CONF / g / f"{o}.yaml"))
                 for g, o in zip(GROUPS, (prior, likelihood, posterior))}
    analytic = all(factories[g].func.has_analytic_kl for g in ("prior", "posterior"))
    return VAE(input_dim, latent=2, encoder_hidden=(8,), decoder_hidden=(8,),
               kl="analytic" if analytic else "mc", **factories)


def _one_step_loss(vae, x):
    opt = vae.configure_optimizers()
    loss = -vae.bound(x).elbo.mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach(), -vae.bound(x).elbo.mean().detach()


@pytest.mark.parametrize("data", ["frey_batch", "mnist_like_batch"])
@pytest.mark.parametrize("prior, likelihood, posterior", COMBINATIONS)
def test_every_combination_trains_a_step_with_finite_loss(
    prior, likelihood, posterior, data, request
):
    x = request.getfixturevalue(data)
    torch.manual_seed(0)
    vae = _build(prior, likelihood, posterior, x.shape[1])
    before = [p.detach().clone() for p in vae.parameters()]
    loss, after = _one_step_loss(vae, x)
    assert torch.isfinite(loss) and torch.isfinite(after)
    assert any(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["data=frey", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("overrides", [
    ["prior=mog", "model.kl=mc"],
    ["prior=vamp", "model.kl=mc"],
    *[[f"likelihood={o}"] for o in OPTIONS["likelihood"]],
    ["posterior=laplace"],
    ["posterior=student_t", "model.kl=mc"],
    ["prior=vamp", "posterior=student_t", "likelihood=beta", "model.kl=mc", "prior.n_components=5"],
])
def test_new_options_compose_into_a_valid_config(overrides):
    validate(_compose(overrides))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_analytic_kl_with_a_prior_without_one_is_a_config_error(prior):
    with pytest.raises(ConfigError, match="model.kl"):
        validate(_compose([f"prior={prior}"]))
