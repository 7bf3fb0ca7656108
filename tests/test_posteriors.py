"""Posterior families: reparameterized, variance exp(log_var), and MC KL = analytic KL."""

import math

import pytest
import torch
from torch.distributions import Independent, kl_divergence
from torch.testing import assert_close

from vae_lightning.posteriors import (
    GaussianPosterior,
    LaplacePosterior,
    StudentTPosterior,
)
from vae_lightning.priors import StandardNormal

FAMILIES = [GaussianPosterior, LaplacePosterior, StudentTPosterior]
LATENT = 4


def _loc_log_var(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, LATENT, generator=g), torch.randn(batch, LATENT, generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_is_reparameterized_and_gradients_reach_the_encoder(family):
    q_net = family(5, LATENT, (8,))
    q = q_net(torch.rand(3, 5))
    assert q.has_rsample and q.event_shape == (LATENT,) and q.batch_shape == (3,)
    q.rsample((2,)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q_net.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_is_loc_and_variance_is_exp_log_var(family):
    loc, log_var = _loc_log_var()
    q = family(5, LATENT).family(loc, log_var)
    assert_close(q.mean, loc)
    assert_close(q.variance, log_var.exp())


def test_student_t_with_infinite_variance_uses_sigma_as_scale():
    loc, log_var = _loc_log_var()
    q = StudentTPosterior(5, LATENT, df=1.0).family(loc, log_var)
    assert_close(q.scale, (0.5 * log_var).exp())
    with pytest.raises(ValueError, match="df"):
        StudentTPosterior(5, LATENT, df=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_has_analytic_kl_says_whether_torch_has_the_kl_to_a_standard_normal(family):
    loc, log_var = _loc_log_var()
    q = Independent(family(5, LATENT).family(loc, log_var), 1)
    try:
        kl_divergence(q, StandardNormal(LATENT).distribution())
        found = True
    except NotImplementedError:
        found = False
    assert family.has_analytic_kl is found


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.has_analytic_kl])
def test_monte_carlo_kl_matches_analytic_kl_within_four_standard_errors(family):
    torch.manual_seed(0)
    loc, log_var = _loc_log_var()
    q = Independent(family(5, LATENT).family(loc, log_var), 1)
    p = StandardNormal(LATENT).distribution()
    n = 200_000
    z = q.sample((n,))
    terms = q.log_prob(z) - p.log_prob(z)  # [n, batch]
    err = (terms.mean(0) - kl_divergence(q, p)).abs()
    assert (err < 4 * terms.std(0) / math.sqrt(n)).all(), err

