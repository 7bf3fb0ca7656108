"""The bound's estimators against closed forms (Appendix B) and torch.distributions."""

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_lightning.likelihoods import Bernoulli, Decoder, Gaussian
from vae_lightning.objectives import draw, elbo, iwae
from vae_lightning.posteriors import GaussianPosterior
from vae_lightning.priors import StandardNormal


def _posterior(batch=8, latent=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=g)
    log_var = torch.randn(batch, latent, generator=g) * 0.5
    return mu, log_var, Independent(Normal(mu, torch.exp(0.5 * log_var)), 1)


def test_analytic_kl_matches_appendix_b_and_torch():
    mu, log_var, q = _posterior()
    prior = StandardNormal(5)
    decoder = Decoder(5, 12, Bernoulli(), hidden=[7])
    x = torch.rand(8, 12)
    bound = elbo(x, q, decoder, prior, n_samples=3, analytic_kl=True)
    appendix_b = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(-1)
    torch.testing.assert_close(bound.kl, appendix_b)
    reference = kl_divergence(q, Independent(Normal(torch.zeros(5), torch.ones(5)), 1))
    torch.testing.assert_close(bound.kl, reference)


def test_monte_carlo_kl_agrees_with_analytic_within_standard_errors():
    torch.manual_seed(1)
    mu, log_var, q = _posterior(batch=4)
    prior = StandardNormal(5)
    samples = draw(torch.rand(4, 12), q, Decoder(5, 12, Bernoulli()), prior, n=20000)
    per_sample_kl = samples.log_qz - samples.log_pz  # [n, batch]
    estimate = per_sample_kl.mean(0)
    standard_error = per_sample_kl.std(0) / math.sqrt(per_sample_kl.shape[0])
    analytic = kl_divergence(q, prior.distribution())
    assert torch.all((estimate - analytic).abs() < 4 * standard_error), (estimate, analytic)
    # The MC estimator (estimator A) is what elbo(..., analytic_kl=False) returns.
    torch.manual_seed(2)
    mc = elbo(torch.rand(4, 12), q, Decoder(5, 12, Bernoulli()), prior, 20000, analytic_kl=False)
    assert torch.all((mc.kl - analytic).abs() < 4 * standard_error)


def test_gradients_reach_the_encoder_through_the_sample():
    torch.manual_seed(0)
    encoder = GaussianPosterior(12, 3, hidden=[8])
    decoder = Decoder(3, 12, Gaussian(), hidden=[8])
    x = torch.rand(16, 12)
    # Only the reconstruction term: the encoder is reached through z = mu + sigma * eps alone.
    recon = elbo(x, encoder(x), decoder, StandardNormal(3)).recon
    (-recon.mean()).backward()
    for p in encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    # Without the reparameterization path (z detached) the encoder gets no gradient.
    encoder.zero_grad()
    z = encoder(x).rsample().detach()
    decoder(z).log_prob(x).mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in encoder.parameters())


def test_elbo_is_reconstruction_minus_kl_and_iwae_k1_is_estimator_a():
    torch.manual_seed(0)
    encoder = GaussianPosterior(12, 3, hidden=[8])
    decoder = Decoder(3, 12, Bernoulli(), hidden=[8])
    prior = StandardNormal(3)
    x = torch.bernoulli(torch.full((10, 12), 0.3))
    q = encoder(x)
    torch.manual_seed(5)
    samples = draw(x, q, decoder, prior, n=1)
    torch.manual_seed(5)
    estimator_a = elbo(x, q, decoder, prior, n_samples=1, analytic_kl=False)
    torch.testing.assert_close(iwae(samples.log_w), estimator_a.elbo)
    torch.testing.assert_close(estimator_a.elbo, estimator_a.recon - estimator_a.kl)


def test_reconstruction_averages_over_l_samples():
    torch.manual_seed(0)
    encoder = GaussianPosterior(12, 3, hidden=[8])
    decoder = Decoder(3, 12, Bernoulli(), hidden=[8])
    x = torch.bernoulli(torch.full((6, 12), 0.5))
    q = encoder(x)
    torch.manual_seed(3)
    bound = elbo(x, q, decoder, StandardNormal(3), n_samples=4)
    torch.manual_seed(3)
    z = q.rsample((4,))
    torch.testing.assert_close(bound.recon, decoder(z).log_prob(x).mean(0))
