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


@pytest.mark.parametrize("logit", [-60.0, -25.0, 20.0, 40.0, 80.0])
def test_continuous_bernoulli_density_integrates_to_one_for_saturated_logits(logit):
    """Where the decoder's logit saturates (pixels always 0 or 1 push it there) the normaliser
    still makes a density: C = L / tanh(L / 2) ~ |L| (torch's, from lambda clamped to
    [eps, 1 - eps], stops at ~16 in float32 and ~36 in float64). The density is ~|L| e^(-|L| d)
    at distance d from its edge, so the integral is on a grid in log d down to e^-50 / |L|."""
    d = torch.cat([torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-50 / math.log(10) - math.log10(abs(logit)), 0, 200001,
                                  dtype=torch.float64)])
    x = d if logit < 0 else 1 - d
    logits = torch.full_like(x, logit)
    density = ContinuousBernoulli().pixel_distribution(logits).log_prob(x).exp()
    assert torch.trapezoid(density, d).item() == pytest.approx(1.0, abs=1e-6)
    # float32, the training precision: the closed form log(L / tanh(L / 2)) per pixel.
    params = torch.full((B, C, *SHAPE[1:]), logit)
    x = torch.rand(B, *SHAPE)
    want = (-torch.nn.functional.binary_cross_entropy_with_logits(
        params.double(), x.double(), reduction="none")
        + math.log(abs(logit) / math.tanh(abs(logit) / 2))).sum(PIXELS)
    assert_close(ContinuousBernoulli()(params).log_prob(x), want.float())


def test_continuous_bernoulli_log_normaliser_is_the_closed_form_at_every_logit():
    """log C(L) = log(L / tanh(L / 2)) from L = 0 (log 2) through the series' switch at
    |L| = 0.01 to |L| = 1e4, in float32 against float64's closed form, with its gradient
    (d/dL log C = 1/L - 1/sinh(L), 0 at L = 0)."""
    from vae_lightning.pixel_distributions import continuous_bernoulli_log_normaliser

    logits = torch.tensor([0.0, 1e-6, 3e-3, 9.99e-3, 1.001e-2, 0.3, -2.0, 15.0, -17.0, 30.0,
                           1e4], dtype=torch.float64)
    exact = torch.where(logits == 0, torch.tensor(math.log(2.0), dtype=torch.float64),
                        (logits / torch.tanh(logits / 2)).log())
    got = continuous_bernoulli_log_normaliser(logits.float())
    assert_close(got.double(), exact, atol=2e-6, rtol=1e-6)
    logits32 = logits.float().requires_grad_()
    (grad,) = torch.autograd.grad(continuous_bernoulli_log_normaliser(logits32).sum(), logits32)
    big = logits.abs() > 1e-3
    slope = torch.zeros_like(logits)
    slope[big] = 1 / logits[big] - 1 / torch.sinh(logits[big].clamp(-700, 700))
    slope[~big] = logits[~big] / 6  # the series' L / 6 near 0
    assert_close(grad.double(), slope, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("logit", [-40.0, -3.0, -0.15, -1e-3, 0.0, 0.05, 0.5, 12.0, 20.0, 60.0])
def test_continuous_bernoulli_mean_is_the_integral_of_x_times_its_density(logit):
    """E[x|z], the images a continuous-Bernoulli decoder shows, against the integral of x p(x)
    on a fine grid (float64), from the float32 parameters training uses."""
    x = torch.linspace(0, 1, 400001, dtype=torch.float64)
    log_c = math.log(2.0) if logit == 0 else math.log(logit / math.tanh(logit / 2))
    density = (logit * x - torch.nn.functional.softplus(torch.tensor(logit, dtype=torch.float64))
               + log_c).exp()
    want = torch.trapezoid(x * density, x).item()
    got = ContinuousBernoulli().pixel_distribution(torch.tensor([logit])).mean.item()
    assert got == pytest.approx(want, abs=2e-6)


@pytest.mark.parametrize("logit", [-50.0, -32.0, -2.0, -5e-4, 0.0, 3e-4, 0.7, 9.0, 32.0, 50.0])
def test_continuous_bernoulli_draws_invert_its_cdf_and_its_entropy_is_the_integral(logit):
    """A draw is F^-1(u) for F(x) = (e^(L x) - 1) / (e^L - 1), the integral of the density
    (checked on a grid of u, float32 parameters against float64's closed form), so draws
    follow the density for every L; the entropy is -integral of p log p on a fine grid."""
    u = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    pixel = ContinuousBernoulli().pixel_distribution(torch.full((999,), logit))
    got = pixel.icdf(u.float()).double()
    if logit == 0:
        want = u
    elif logit < 0:
        want = torch.log1p(u * math.expm1(logit)) / logit
    else:
        want = 1 + torch.log1p((1 - u) * math.expm1(-logit)) / logit
    assert_close(got, want, atol=2e-6, rtol=1e-5)
    x = torch.linspace(0, 1, 400001, dtype=torch.float64)
    log_c = math.log(2.0) if logit == 0 else math.log(logit / math.tanh(logit / 2))
    log_p = (logit * x - torch.nn.functional.softplus(torch.tensor(logit, dtype=torch.float64))
             + log_c)
    entropy = -torch.trapezoid(log_p.exp() * log_p, x).item()
    got = ContinuousBernoulli().pixel_distribution(torch.tensor([logit])).entropy().item()
    assert got == pytest.approx(entropy, abs=2e-5)


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
