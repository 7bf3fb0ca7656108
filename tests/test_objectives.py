"""The bound's estimators against closed forms (Appendix B) and torch.distributions."""

import math

import torch
from models import SHAPE, small_vae
from torch.distributions import Independent, Normal, kl_divergence

from vae_lightning.likelihoods import Gaussian
from vae_lightning.objectives import draw, elbo_estimate, iw_bound


def _posterior(batch=8, latent=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=g)
    log_var = torch.randn(batch, latent, generator=g) * 0.5
    return mu, log_var, Independent(Normal(mu, torch.exp(0.5 * log_var)), 1)


def _model(latent, hidden=(7,), seed=0, **kwargs):
    torch.manual_seed(seed)
    return small_vae(SHAPE, latent, hidden=hidden, **kwargs)


def test_analytic_kl_matches_appendix_b_and_torch():
    mu, log_var, q = _posterior()
    model = _model(5)
    x = torch.rand(8, *SHAPE)
    bound = elbo_estimate(model, x, n_samples=3, kl="analytic", q=q)
    appendix_b = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(-1)
    torch.testing.assert_close(bound.kl, appendix_b)
    reference = kl_divergence(q, Independent(Normal(torch.zeros(5), torch.ones(5)), 1))
    torch.testing.assert_close(bound.kl, reference)


def test_monte_carlo_kl_agrees_with_analytic_within_standard_errors():
    torch.manual_seed(1)
    mu, log_var, q = _posterior(batch=4)
    model = _model(5)
    p = model.prior.distribution()
    samples = draw(model, torch.rand(4, *SHAPE), q, p, n=20000)
    per_sample_kl = samples.log_qz - samples.log_pz  # [n, batch]
    estimate = per_sample_kl.mean(0)
    standard_error = per_sample_kl.std(0) / math.sqrt(per_sample_kl.shape[0])
    analytic = kl_divergence(q, p)
    assert torch.all((estimate - analytic).abs() < 4 * standard_error), (estimate, analytic)
    # The MC estimator (estimator A) is what elbo_estimate(..., kl="mc") returns.
    torch.manual_seed(2)
    mc = elbo_estimate(model, torch.rand(4, *SHAPE), 20000, kl="mc", q=q)
    assert torch.all((mc.kl - analytic).abs() < 4 * standard_error)


def test_gradients_reach_the_encoder_through_the_sample():
    model = _model(3, hidden=(8,), likelihood=Gaussian())
    encoder, decoder = model.encoder, model.decoder
    torch.manual_seed(0)
    x = torch.rand(16, *SHAPE)
    # Only the reconstruction term: the encoder is reached through z = mu + sigma * eps alone.
    recon = elbo_estimate(model, x).recon
    (-recon.mean()).backward()
    for p in encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    # Without the reparameterization path (z detached) the encoder gets no gradient.
    encoder.zero_grad()
    z = encoder(x).rsample().detach()
    decoder(z).log_prob(x).mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in encoder.parameters())


def test_elbo_is_reconstruction_minus_kl_and_iwae_k1_is_estimator_a():
    model = _model(3, hidden=(8,))
    x = torch.bernoulli(torch.full((10, *SHAPE), 0.3))
    q = model.encoder(x)
    torch.manual_seed(5)
    samples = draw(model, x, q, model.prior.distribution(), n=1)
    torch.manual_seed(5)
    estimator_a = elbo_estimate(model, x, n_samples=1, kl="mc", q=q)
    torch.testing.assert_close(iw_bound(samples.log_w), estimator_a.elbo)
    torch.testing.assert_close(estimator_a.elbo, estimator_a.recon - estimator_a.kl)


def test_reconstruction_averages_over_l_samples():
    model = _model(3, hidden=(8,))
    x = torch.bernoulli(torch.full((6, *SHAPE), 0.5))
    q = model.encoder(x)
    torch.manual_seed(3)
    bound = elbo_estimate(model, x, n_samples=4, q=q)
    torch.manual_seed(3)
    z = q.rsample((4,))
    torch.testing.assert_close(bound.recon, model.decoder(z).log_prob(x).mean(0))
