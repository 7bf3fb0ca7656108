"""Each likelihood's log p(x|z) against its closed form, normalising constants included: a
distribution over images [C, H, W] from decoder outputs [B, n_params * C, H, W]."""

import math

import pytest
import torch
from torch.testing import assert_close

from vae_lightning.likelihoods import Bernoulli, Beta, ContinuousBernoulli, Gaussian, GaussianFixed

B, SHAPE = 5, (2, 3, 4)  # two channels, so the parameters' split by channel is checked too
C = SHAPE[0]
LOG_2PI = math.log(2 * math.pi)
PIXELS = (-3, -2, -1)


def _params(n_params, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, n_params * C, *SHAPE[1:], generator=g, dtype=torch.float64).float()


def _split(params):
    """The n_params parameters of each pixel: the decoder's channels are [param, channel]."""
    return params.chunk(params.shape[-3] // C, dim=-3)


def test_bernoulli_is_the_binary_cross_entropy():
    logits, x = _params(1), torch.randint(0, 2, (B, *SHAPE)).float()
    y = torch.sigmoid(logits)
    want = (x * y.log() + (1 - x) * (1 - y).log()).sum(PIXELS)
    p = Bernoulli()(logits)
    assert p.event_shape == SHAPE and p.batch_shape == (B,)
    assert_close(p.log_prob(x), want)


def test_gaussian_learned_variance_includes_constants_and_floor():
    params, x = _params(2), torch.rand(B, *SHAPE)
    raw_mean, raw_log_var = _split(params)
    mu, var = torch.sigmoid(raw_mean), 1e-2 + raw_log_var.exp()
    want = (-0.5 * LOG_2PI - 0.5 * var.log() - (x - mu) ** 2 / (2 * var)).sum(PIXELS)
    p = Gaussian("sigmoid", min_var=1e-2)(params)
    assert p.event_shape == SHAPE and p.batch_shape == (B,)
    assert_close(p.log_prob(x), want)


@pytest.mark.parametrize("sigma, activation", [(0.1, "sigmoid"), (1.5, "identity")])
def test_gaussian_fixed_sigma_includes_constants(sigma, activation):
    raw_mean, x = _params(1), torch.rand(B, *SHAPE)
    mu = torch.sigmoid(raw_mean) if activation == "sigmoid" else raw_mean
    want = (-0.5 * LOG_2PI - math.log(sigma) - (x - mu) ** 2 / (2 * sigma**2)).sum(PIXELS)
    assert_close(GaussianFixed(sigma, activation)(raw_mean).log_prob(x), want)


def test_gaussian_fixed_rejects_non_positive_sigma():
    with pytest.raises(ValueError, match="sigma"):
        GaussianFixed(0.0)


def test_continuous_bernoulli_is_bernoulli_plus_log_normaliser():
    logits = _params(1).double()
    logits = logits + 0.2 * logits.sign()  # keep lambda away from 1/2, where C is 0/0
    x = torch.rand(B, *SHAPE, dtype=torch.float64)
    lam = torch.sigmoid(logits)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    want = (x * lam.log() + (1 - x) * (1 - lam).log() + log_c).sum(PIXELS)
    assert_close(ContinuousBernoulli()(logits).log_prob(x.float()), want.float())


def test_continuous_bernoulli_at_one_half_is_uniform_density_times_two():
    x = torch.rand(B, *SHAPE)  # C(1/2) = 2 and lambda^x (1 - lambda)^(1-x) = 1/2
    assert_close(ContinuousBernoulli()(torch.zeros(B, *SHAPE)).log_prob(x),
                 torch.full((B,), 0.0))


@pytest.mark.parametrize("lam", [0.01, 0.2, 0.4995, 0.5, 0.7, 0.99])
def test_continuous_bernoulli_density_integrates_to_one(lam):
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    logit = torch.logit(torch.tensor(lam, dtype=torch.float64)).expand_as(x)
    density = ContinuousBernoulli().pixel_distribution(logit).log_prob(x).exp()
    assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-6)


def test_beta_matches_closed_form_and_clamps_saturated_pixels():
    params = _params(2)
    a, b = (torch.nn.functional.softplus(p) + 1e-4 for p in _split(params))
    x = torch.rand(B, *SHAPE).clamp(0.01, 0.99)
    x[..., 0], x[..., 1] = 0.0, 1.0
    eps = 1e-3
    xc = x.clamp(eps, 1 - eps)
    log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    want = ((a - 1) * xc.log() + (b - 1) * (1 - xc).log() - log_beta_fn).sum(PIXELS)
    got = Beta(eps)(params).log_prob(x)
    assert_close(got, want)
    assert_close(got, torch.distributions.Beta(a, b).log_prob(xc).sum(PIXELS))
