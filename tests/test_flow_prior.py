"""The masked autoregressive flow prior (model/prior=flow): its log-density is the change of
variables of its steps (against autograd's Jacobian) and integrates to one; it starts as
N(0, I); its draws invert its steps; it trains with the model, its samples reach sample() and
vae-sample, and what cannot work with it is refused when the model is composed."""

import json
import math

import numpy as np
import pytest
import torch
from compose import compose_train, sample_config
from models import binary_images, fit, small_vae
from omegaconf import OmegaConf
from torch.autograd.functional import jacobian

from vae_lightning.objectives import closed_form_kl
from vae_lightning.objectives.free_bits import FreeBits
from vae_lightning.posteriors import Gaussian, StudentT
from vae_lightning.posteriors.planar import Planar
from vae_lightning.priors import StandardNormal
from vae_lightning.priors.flow import FlowPrior
from vae_lightning.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _prior(latent=3, seed=0):
    """A flow prior away from its N(0, I) start."""
    torch.manual_seed(seed)
    prior = FlowPrior(latent, length=3, hidden=[16])
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0.0, 0.3)
    return prior


def test_log_p_is_the_base_density_plus_the_log_jacobian_of_the_steps():
    """log p(z) = log N(u; 0, I) + log |det du/dz| for u = T_K(... T_1(z)), the Jacobian by
    autograd."""
    prior = _prior()
    p = prior.distribution()
    z = torch.randn(4, 3) * 2

    def forward(v):
        for transform in reversed(p.transforms):
            v = transform.inv(v)  # the inverse of z = T^-1(u): u = T(z)
        return v

    for zi in z:
        u = forward(zi)
        det = torch.linalg.det(jacobian(forward, zi))
        expected = p.base_dist.log_prob(u) + det.abs().log()
        torch.testing.assert_close(prior.log_prob(zi), expected, rtol=1e-5, atol=1e-5)


def test_its_density_integrates_to_one():
    prior = _prior(latent=2)
    grid = torch.linspace(-25, 25, 1001)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = prior.log_prob(z).exp().double().reshape(1001, 1001)
    total = torch.trapezoid(torch.trapezoid(density, grid.double()), grid.double())
    assert total.item() == pytest.approx(1.0, abs=1e-3)


def test_its_draws_invert_its_steps_and_have_its_density():
    prior = _prior()
    torch.manual_seed(1)
    z = prior.sample(2000)
    assert z.shape == (2000, 3) and torch.isfinite(z).all()
    p = prior.distribution()
    u = z
    for transform in reversed(p.transforms):
        u = transform.inv(u)
    torch.manual_seed(1)
    torch.testing.assert_close(u, p.base_dist.sample((2000,)), atol=1e-2, rtol=1e-3)  # float32


def test_its_draws_have_its_moments():
    """The mean and second moments of 100,000 draws against those of the density on a grid."""
    prior = _prior(latent=2)
    grid = torch.linspace(-25, 25, 1001, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        weight = prior.log_prob(z.float()).exp().double()
    weight = weight / weight.sum()
    features = torch.cat([z, z[:, :1] ** 2, z[:, 1:] ** 2, z[:, :1] * z[:, 1:]], 1)
    expected = (weight[:, None] * features).sum(0)
    torch.manual_seed(2)
    draws = prior.sample(100000).double()
    drawn = torch.cat([draws, draws[:, :1] ** 2, draws[:, 1:] ** 2, draws[:, :1] * draws[:, 1:]],
                      1)
    se = drawn.std(0) / math.sqrt(len(drawn))
    assert ((drawn.mean(0) - expected).abs() < 5 * se + 1e-3).all(), (drawn.mean(0), expected)


def test_it_starts_as_the_standard_normal():
    prior, z = FlowPrior(4), torch.randn(10, 4) * 3
    torch.testing.assert_close(prior.log_prob(z), StandardNormal(4).log_prob(z))


def test_it_trains_with_the_model_and_its_kl_is_monte_carlo():
    torch.manual_seed(0)
    model = small_vae(latent=2, hidden=(32,), prior=FlowPrior(2, length=2, hidden=[16]))
    assert closed_form_kl(model.encoder(binary_images(2)), model.prior.distribution()) is None
    x = binary_images(256)
    start = {k: v.clone() for k, v in model.prior.state_dict().items()}
    losses = fit(model, x)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    assert any(not torch.equal(v, start[k]) for k, v in model.prior.state_dict().items())
    assert model.sample(7).shape == (7, 1, 3, 4)


def test_it_works_with_a_flow_posterior():
    model = small_vae(posterior=Planar(length=2), prior=FlowPrior(2, length=2, hidden=[8]))
    loss, bound = model.objective.loss(model, binary_images(8))
    assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all()


@pytest.mark.parametrize("parts, words", [
    ({"objective": FreeBits()}, ["FreeBits", "product of one distribution per latent"]),
    ({"posterior": StudentT(df=2.0)}, ["FlowPrior", "finite second moment"]),
])
def test_what_cannot_work_with_it_is_refused_when_composed(parts, words):
    with pytest.raises(ValueError) as err:
        small_vae(prior=FlowPrior(2, length=1, hidden=[8]), **{"posterior": Gaussian(), **parts})
    for word in words:
        assert word in str(err.value)


def test_trained_from_the_config_group_sampled_and_evaluated(tmp_path):
    from vae_lightning.config import instantiate_node as build_node

    cfg = compose_train(["data=frey", "model/prior=flow", "model.prior.hidden=[16]",
                         "model.prior.length=2", "model.latent=2",
                         "model.encoder.net.hidden=[32]", "model.decoder.net.hidden=[32]",
                         "trainer.max_epochs=2", "logger=none", "callbacks.figures.n_points=0",
                         "trainer.enable_progress_bar=false"], tmp_path / "run")
    results = train(cfg)
    assert results["status"] == "completed" and math.isfinite(results["test/elbo"])
    eval_cfg = OmegaConf.create({"_target_": "vae_lightning.evaluate.Evaluation", "k": 20,
                                 "device": "cpu", "limit": 200})
    build_node(eval_cfg, "eval")(results["checkpoint"], 0, str(tmp_path / "eval"))
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["iw"]["nats"] >= saved["elbo"]["nats"] - 1e-3
    out = sample_config([f"ckpt_path={results['checkpoint']}", "n=6", "device=cpu",
                         f"output_dir={tmp_path / 'out'}"])()
    samples = np.load(out / "samples.npy", allow_pickle=False)
    from vae_lightning.module import VAE

    model = VAE.load_from_checkpoint(results["checkpoint"])
    torch.manual_seed(0)
    np.testing.assert_allclose(samples, model.sample(6).numpy(), rtol=1e-5, atol=1e-6)
