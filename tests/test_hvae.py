"""The Hamiltonian VAE (objectives/hvae.py): the map (z_0, gamma) -> (z_K, rho_K) has unit
Jacobian, so its log-weights are unbiased for p(x) (the IW estimate reaches a closed-form log p(x));
vanishing steps give the ELBO's weights; it trains; the learned variant moves eps and beta_0; a
prior confined to a sphere or one-hot blocks is refused."""

import math

import pytest
import torch
from compose import compose_train
from models import binary_images, fit, small_vae
from torch.distributions import Independent, MultivariateNormal, Normal

from vae_lightning.errors import ConfigError
from vae_lightning.objectives import importance_weighted
from vae_lightning.objectives.hvae import HVAE
from vae_lightning.priors import StandardNormal
from vae_lightning.train import build_run

LATENT = 2


class _LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I): log p(x) = log N(x; b, W W^T + s^2 I); q a
    diagonal Gaussian off the exact posterior (wider, shifted), the HVAE's to improve on."""

    def __init__(self, objective, x_dim=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(x_dim, LATENT, generator=g)
        self.b, self.s = torch.randn(x_dim, generator=g), 0.8
        self.prior, self.objective = StandardNormal(LATENT), objective
        self.x = self.b + torch.randn(4, x_dim, generator=g) * 2
        cov = torch.linalg.inv(torch.eye(LATENT) + self.w.T @ self.w / self.s**2)
        self.loc = (self.x - self.b) @ self.w @ cov / self.s**2 + 0.3
        self.scale = (1.6 * cov.diagonal()).sqrt().expand_as(self.loc)
        self.log_px = MultivariateNormal(self.b, self.w @ self.w.T + self.s**2 * torch.eye(
            x_dim)).log_prob(self.x)

    def encoder(self, x):
        return Independent(Normal(self.loc, self.scale), 1)

    def decoder(self, z):
        return Independent(Normal(z @ self.w.T + self.b, self.s), 1)


def test_the_tempered_leapfrog_map_has_unit_jacobian():
    """Leapfrog steps preserve volume and the tempering's sqrt(beta_0) cancels rho_0's
    1/sqrt(beta_0): det d(z_K, rho_K)/d(z_0, gamma) = 1, whatever eps, K and beta_0."""
    for steps, eps, beta0 in ((1, 0.3, 0.3), (3, 0.2, 0.1), (5, 0.05, 0.9)):
        hvae = HVAE(steps=steps, step_size=eps, beta0=beta0)
        model = _LinearGaussian(hvae)
        x = model.x[:1]

        def step(v, model=model, hvae=hvae, x=x):
            z, rho, _, _ = hvae.flow(model, x, v[None, :LATENT], v[None, LATENT:], True)
            return torch.cat([z[0], rho[0]])

        v = torch.randn(2 * LATENT, dtype=torch.float64).float()
        jacobian = torch.autograd.functional.jacobian(step, v, create_graph=False)
        assert torch.linalg.det(jacobian.double()).item() == pytest.approx(1.0, abs=1e-4)


def test_the_iw_estimate_with_the_hvae_weights_reaches_log_p_x():
    """The weights are unbiased for p(x): at large k the IW estimate reaches the closed form,
    from below, tightening with k; the mean log-weight (the HVAE bound) stays below log p(x)."""
    model = _LinearGaussian(HVAE(steps=4, step_size=0.15, beta0=0.5))
    gaps = []
    for k in (50, 4000):
        torch.manual_seed(0)
        elbo, iw = importance_weighted(model, model.x, k, chunk=500)
        gaps.append((model.log_px - iw).mean().item())
    assert (elbo < model.log_px).all()  # the mean of 4000 log-weights: the HVAE bound
    gaps.insert(0, (model.log_px - elbo).mean().item())  # the bound's gap, k = 1's expectation
    assert gaps[0] > gaps[1] > gaps[2] >= -0.02, gaps
    assert gaps[2] < 0.02, gaps
    torch.manual_seed(1)
    log_w = HVAE(steps=4, step_size=0.15, beta0=0.5).log_weights(
        model, model.x, model.encoder(model.x), model.prior.distribution(), 20000)
    ratio = torch.exp(log_w - model.log_px).mean(0)  # E[w] / p(x) = 1
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.03), ratio


def test_vanishing_steps_give_the_elbo_weights():
    """eps -> 0: z_K = z_0 and rho_K = gamma, so the weight is p(x, z_0) / q(z_0|x)."""
    model = _LinearGaussian(HVAE(steps=3, step_size=1e-7, beta0=0.3))
    q, p = model.encoder(model.x), model.prior.distribution()
    torch.manual_seed(0)
    hvae = model.objective.log_weights(model, model.x, q, p, 5)
    torch.manual_seed(0)
    z0 = []
    for _ in range(5):  # each sample's z_0, then its momentum (unused here)
        z0.append(q.rsample())
        torch.randn_like(z0[-1])
    z0 = torch.stack(z0)
    plain = model.decoder(z0).log_prob(model.x) + p.log_prob(z0) - q.log_prob(z0)
    torch.testing.assert_close(hvae, plain, rtol=0, atol=1e-4)


def test_it_trains_and_the_learned_variant_moves_its_step_and_temperature():
    torch.manual_seed(0)
    objective = HVAE(steps=2, step_size=0.05, beta0=0.5, learn=True)
    model = small_vae(latent=2, hidden=(16,), objective=objective)
    start = (objective.step_size().item(), objective.beta0().item())
    x = binary_images(256)
    losses = fit(model, x)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    assert (objective.step_size().item(), objective.beta0().item()) != start
    assert all(math.isfinite(v) for v in (objective.step_size().item(), objective.beta0().item()))
    fixed = HVAE()
    assert not fixed.step_param.requires_grad and not fixed.beta0_logit.requires_grad
    assert HVAE(beta0=1.0).beta0().item() == 1.0


def test_the_training_bound_is_the_hvae_bound_and_evaluation_uses_its_weights():
    """train/elbo is recon - kl = the HVAE log-weight's mean; vae-eval's estimate (the same
    importance_weighted a VAE's checkpoint goes through) weighs by the HVAE's proposal, which
    eval.json names (its elbo is the HVAE bound, not q's)."""
    assert "the HVAE bound, not q's ELBO" in HVAE.proposal
    torch.manual_seed(0)
    model = small_vae(latent=2, hidden=(16,), objective=HVAE(steps=2, step_size=0.05))
    x = binary_images(32)
    torch.manual_seed(3)
    loss, bound = model.objective.loss(model, x)
    assert loss.item() == pytest.approx(-bound.elbo.mean().item(), rel=1e-6)
    torch.manual_seed(4)
    _, iw = importance_weighted(model, x, 7)
    torch.manual_seed(4)
    q, p = model.encoder(x), model.prior.distribution()
    log_w = model.objective.log_weights(model, x, q, p, 7)
    expected = torch.logsumexp(log_w, 0) - math.log(7)
    torch.testing.assert_close(iw, expected)


def test_a_prior_off_r_latent_is_refused(tmp_path):
    with pytest.raises((ConfigError, ValueError)) as err:
        build_run(compose_train(["data=frey", "model=svae", "model/objective=hvae"], tmp_path))
    assert "R^latent" in str(err.value) and "sphere" in str(err.value)


def test_compiled_networks_are_refused_before_training(tmp_path):
    """torch.compile'd networks cannot take the double backward the leapfrog steps need."""
    with pytest.raises((ConfigError, ValueError)) as err:
        build_run(compose_train(["data=frey", "model/objective=hvae", "model.compile=true"],
                                tmp_path))
    assert "model.compile=false" in str(err.value)


def test_per_dimension_bounded_step_sizes_learn_within_their_bound():
    """The paper's eps in R^d, kept in (0, max_step) as the authors' code: one size per latent
    dimension, each learned, all within the bound; the map keeps its unit Jacobian."""
    torch.manual_seed(0)
    objective = HVAE(steps=2, step_size=0.2, beta0=0.6, learn=True, per_dimension=True,
                     latent=2, max_step=0.5)
    assert torch.allclose(objective.step_size(), torch.full((2,), 0.2))
    model = small_vae(latent=2, hidden=(16,), objective=objective)
    fit(model, binary_images(256), steps=60)
    eps = objective.step_size().detach()
    assert eps.shape == (2,) and (eps > 0).all() and (eps < 0.5).all()
    assert not torch.allclose(eps, torch.full((2,), 0.2))
    toy = _LinearGaussian(HVAE(steps=3, step_size=0.2, beta0=0.4, per_dimension=True, latent=2,
                               max_step=0.5))
    with torch.no_grad():
        toy.objective.step_param.copy_(torch.tensor([-1.0, 0.7]))

    def step(v):
        z, rho, _, _ = toy.objective.flow(toy, toy.x[:1], v[None, :2], v[None, 2:], True)
        return torch.cat([z[0], rho[0]])

    jacobian = torch.autograd.functional.jacobian(step, torch.randn(4))
    assert torch.linalg.det(jacobian.double()).item() == pytest.approx(1.0, abs=1e-4)


def test_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_step"):
        HVAE(step_size=0.6, max_step=0.5)
    with pytest.raises(ValueError, match="latent"):
        HVAE(per_dimension=True)
    with pytest.raises((ConfigError, ValueError), match="latent"):
        build_run(compose_train(["data=frey", "model/objective=hvae",
                                 "model.objective.per_dimension=true",
                                 "model.objective.latent=3", "model.latent=2"], tmp_path))


def _jacobian_det(toy):
    """det d(z_K, rho_K) / d(z_0, gamma) of ``toy``'s HVAE at one random point."""
    def step(v):
        z, rho, _, _ = toy.objective.flow(toy, toy.x[:1], v[None, :LATENT], v[None, LATENT:],
                                          True)
        return torch.cat([z[0], rho[0]])

    jacobian = torch.autograd.functional.jacobian(step, torch.randn(2 * LATENT))
    return torch.linalg.det(jacobian.double()).item()


def test_free_tempering_and_per_step_sizes_keep_unit_jacobian_and_unbiased_weights():
    """The paper's free tempering (a factor alpha_k per step, rho_0 scaled by 1 / prod alpha_k)
    and the authors' vary_eps (a step size per leapfrog step and dimension): the map keeps unit
    Jacobian at any parameter values, and the weights stay unbiased for p(x)."""
    torch.manual_seed(0)
    hvae = HVAE(steps=3, step_size=0.15, beta0=0.4, tempering="free", vary_step=True,
                per_dimension=True, latent=LATENT, max_step=0.5)
    assert hvae.step_param.shape == (3, LATENT) and hvae.beta0_logit.shape == (3,)
    assert hvae.beta0().item() == pytest.approx(0.4, rel=1e-5)  # prod alpha_k^2 starts at beta0
    with torch.no_grad():  # unequal factors and sizes: no symmetry to hide an error behind
        hvae.beta0_logit.copy_(torch.tensor([1.5, 2.5, 2.0]))
        hvae.step_param.copy_(torch.tensor([[-1.0, -0.5], [-0.8, -1.2], [-1.5, -0.7]]))
    toy = _LinearGaussian(hvae)
    assert _jacobian_det(toy) == pytest.approx(1.0, abs=1e-4)
    torch.manual_seed(1)
    log_w = hvae.log_weights(toy, toy.x, toy.encoder(toy.x), toy.prior.distribution(), 20000)
    ratio = torch.exp(log_w - toy.log_px).mean(0)  # E[w] / p(x) = 1
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.03), ratio


def test_the_free_and_per_step_forms_contain_the_fixed_ones():
    """Free factors set to the quadratic schedule's, and per-step sizes all equal to one size,
    give the quadratic, one-size flow: the same z_K and rho_K."""
    fixed = HVAE(steps=4, step_size=0.1, beta0=0.3)
    free = HVAE(steps=4, step_size=0.1, beta0=0.3, tempering="free", vary_step=True)
    start, alphas = fixed._tempering()
    with torch.no_grad():
        free.beta0_logit.copy_(torch.logit(torch.stack(alphas)))
    free_start, _ = free._tempering()
    assert free_start.item() == pytest.approx(start.item(), rel=1e-5)
    toy = _LinearGaussian(fixed)
    z0, gamma = torch.randn(4, LATENT), torch.randn(4, LATENT)
    expected = fixed.flow(toy, toy.x, z0, gamma, False)
    toy.objective = free
    got = free.flow(toy, toy.x, z0, gamma, False)
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_learned_free_factors_and_per_step_sizes_move_apart():
    torch.manual_seed(0)
    objective = HVAE(steps=3, step_size=0.1, beta0=0.5, tempering="free", vary_step=True,
                     learn=True, max_step=0.5)
    model = small_vae(latent=2, hidden=(16,), objective=objective)
    fit(model, binary_images(256), steps=60)
    eps, alpha = objective.step_size().detach(), torch.sigmoid(objective.beta0_logit.detach())
    assert eps.shape == (3,) and ((eps > 0) & (eps < 0.5)).all()
    assert eps.unique().numel() == 3 and alpha.unique().numel() == 3  # each its own gradient
    assert 0 < objective.beta0().item() < 1


def test_an_unknown_tempering_is_refused(tmp_path):
    with pytest.raises((ConfigError, ValueError)) as err:
        build_run(compose_train(["data=frey", "model/objective=hvae",
                                 "model.objective.tempering=cosine"], tmp_path))
    assert "tempering" in str(err.value) and "free" in str(err.value)


def test_the_authors_mnist_preset_builds_their_networks_and_hvae(tmp_path):
    """experiment=hvae_mnist: the authors' convolutional networks (28 -> 14 -> 7 -> 4 by 5x5
    stride-2 convolutions, 450 softplus units), 64 latents, K = 10 leapfrog steps with
    per-dimension sizes at 0.2 in (0, 0.5), T_0 = 1.5 learned, Adamax at 5e-4 (eps 1e-7)."""
    cfg = compose_train(["experiment=hvae_mnist", f"data.root={tmp_path}", "logger=none"],
                        tmp_path / "run")
    model = build_run(cfg).model
    x = torch.rand(3, 1, 28, 28)
    encoder, decoder = model.encoder.net, model.decoder.net
    h = x
    for layer in encoder:
        if isinstance(layer, torch.nn.Flatten):
            break
        h = layer(h)
    assert h.shape == (3, 32, 4, 4)  # the feature maps the 450 units read
    assert [m.out_features for m in encoder if isinstance(m, torch.nn.Linear)] == [450, 128]
    assert [m.out_features for m in decoder if isinstance(m, torch.nn.Linear)] == [450, 512]
    assert model.decoder(torch.randn(3, 64)).mean.shape == (3, 1, 28, 28)
    hvae = model.objective
    assert isinstance(hvae, HVAE) and hvae.steps == 10 and hvae.step_param.requires_grad
    assert torch.allclose(hvae.step_size(), torch.full((64,), 0.2))
    assert 1 / hvae.beta0().item() == pytest.approx(1.5, rel=1e-5)
    assert cfg.model.optimizer._target_ == "torch.optim.Adamax"
    assert (cfg.model.optimizer.lr, cfg.model.optimizer.eps) == (5e-4, 1e-7)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, model.latent) == (100, 2000, 64)


def test_the_iw_estimate_is_the_same_for_every_chunk():
    """Each sample's z_0 and momentum are drawn in turn, so that the k samples of an evaluation
    are the same whatever the chunks they are scored in (as for the other objectives): the
    chunk is a memory setting, not a change of the estimate."""
    model = _LinearGaussian(HVAE(steps=2, step_size=0.1, beta0=0.5))
    estimates = []
    for chunk in (64, 16, 1):
        torch.manual_seed(0)
        estimates.append(importance_weighted(model, model.x, 64, chunk))
    for elbo, iw in estimates[1:]:
        torch.testing.assert_close(elbo, estimates[0][0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(iw, estimates[0][1], rtol=1e-5, atol=1e-4)
