"""The hyperspherical VAE (posteriors.von_mises_fisher, priors.hyperspherical): log I_v against
scipy and closed forms, the vMF normaliser against its closed form on S^2 and by quadrature on
S^1, samples on the sphere with E[mu^T z] = A_m(kappa) and, on S^2, the closed-form law of w,
the analytic KL to the uniform prior against Monte Carlo, the gradients (exact for mu; for kappa
the paper's g_rep, whose bias is measured), the importance-weighted estimate of a toy model
against its closed-form log p(x), the pairings refused, and the preset training on MNIST."""

import math

import numpy as np
import pytest
import torch
from compose import SHARED_DATA, compose_train, short_mnist_run
from scipy import special, stats
from torch.distributions import kl_divergence

from vae_lightning.args import ArgumentError
from vae_lightning.errors import ConfigError
from vae_lightning.objectives.base import iw_bound
from vae_lightning.posteriors.von_mises_fisher import (
    VMF,
    VonMisesFisher,
    bessel_ratio,
    log_bessel_i,
    sphere_log_area,
)
from vae_lightning.priors.hyperspherical import HypersphericalUniform, UniformSphere
from vae_lightning.train import build_run

F64 = torch.float64


def vmf(m, kappa, n=(), seed=0):
    """vMF with a random unit mean direction on S^(m-1), batch shape ``n``."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(m, generator=g, dtype=F64)
    mu = mu / mu.norm()
    return VMF(mu.expand(*n, m), torch.full(n, float(kappa), dtype=F64)), mu


@pytest.mark.parametrize("v", [0.0, 0.5, 4.0, 24.0])
def test_log_bessel_i_is_scipy_s_and_its_gradient_is_v_over_x_plus_the_ratio(v):
    x = torch.tensor([1e-3, 0.3, 1.0, 7.5, 60.0, 900.0], dtype=F64, requires_grad=True)
    ours = log_bessel_i(x, v)
    expected = np.log(special.ive(v, x.detach().numpy())) + x.detach().numpy()
    finite = np.isfinite(expected)  # ive underflows far below the order: the series' first term
    assert np.allclose(ours.detach().numpy()[finite], expected[finite], rtol=1e-12)
    series = v * np.log(x.detach().numpy() / 2) - special.gammaln(v + 1)
    assert np.allclose(ours.detach().numpy()[~finite], series[~finite], rtol=1e-9)
    assert torch.autograd.gradcheck(lambda t: log_bessel_i(t, v), (x[1:5],))
    assert torch.autograd.gradcheck(lambda t: bessel_ratio(t, v), (x[1:5],))


def test_log_bessel_i_of_order_one_half_is_the_closed_form():
    """I_(1/2)(x) = sqrt(2 / (pi x)) sinh(x)."""
    x = torch.tensor([0.01, 0.5, 3.0, 40.0], dtype=F64)
    closed = 0.5 * torch.log(2 / (math.pi * x)) + torch.log(torch.sinh(x))
    assert torch.allclose(log_bessel_i(x, 0.5), closed, rtol=1e-12)


def test_the_normaliser_on_s2_is_kappa_over_4_pi_sinh_kappa():
    kappa = torch.tensor([0.1, 1.0, 10.0, 300.0], dtype=F64)
    q = VMF(torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(4, 3), kappa)
    # log(kappa / (4 pi sinh kappa)), sinh written so that it does not overflow
    closed = (kappa.log() - math.log(2 * math.pi) - kappa - torch.log1p(-torch.exp(-2 * kappa)))
    assert torch.allclose(q.log_normalizer(), closed, rtol=1e-12)


@pytest.mark.parametrize("kappa", [0.3, 4.0, 50.0])
def test_the_density_on_the_circle_integrates_to_one(kappa):
    q, mu = vmf(2, kappa)
    theta = torch.linspace(0, 2 * math.pi, 200001, dtype=F64)[:-1]
    z = torch.stack([theta.cos(), theta.sin()], -1)
    total = q.log_prob(z).exp().mean() * 2 * math.pi  # the rectangle rule, exact for periodic
    assert total.item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("m", [2, 3, 10, 50])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 300.0])
def test_samples_lie_on_the_sphere_with_mean_resultant_a_m_of_kappa(m, kappa):
    n = 20000
    q, mu = vmf(m, kappa, (n,), seed=m)
    torch.manual_seed(m)
    z = q.rsample()
    assert torch.allclose(z.norm(dim=-1), torch.ones(n, dtype=F64), atol=1e-12)
    w = z @ mu
    a = q.mean_resultant()[0].item()
    assert abs(w.mean().item() - a) < 4.5 * w.std().item() / math.sqrt(n)
    # Isotropic about mu: the part of z orthogonal to mu averages to 0.
    rest = z - w[:, None] * mu
    assert rest.mean(0).abs().max().item() < 4.5 * rest.std(0).max().item() / math.sqrt(n)
    # Independent draws for a leading sample shape, each on the sphere.
    assert q.rsample((3,)).shape == (3, n, m)


@pytest.mark.parametrize("kappa", [0.5, 5.0, 80.0])
def test_on_s2_w_follows_its_closed_form_law(kappa):
    """On S^2, w = mu^T z has density kappa exp(kappa w) / (2 sinh kappa) on [-1, 1]: CDF
    (exp(kappa (w + 1)) - 1) / (exp(2 kappa) - 1)."""
    q, mu = vmf(3, kappa, (5000,))
    torch.manual_seed(1)
    w = (q.sample() @ mu).numpy()

    def cdf(x):
        return np.expm1(kappa * (x + 1)) / np.expm1(2 * kappa)

    assert stats.kstest(w, cdf).pvalue > 1e-3


@pytest.mark.parametrize("m, kappa", [(3, 2.0), (10, 15.0), (50, 100.0)])
def test_the_analytic_kl_to_the_uniform_prior_equals_monte_carlo(m, kappa):
    q, _ = vmf(m, kappa, (40000,))
    p = UniformSphere(m, torch.zeros((), dtype=F64))
    torch.manual_seed(2)
    z = q.sample()
    mc = q.log_prob(z) - p.log_prob(z)
    analytic = kl_divergence(q, p)
    assert analytic.shape == (40000,)
    assert abs(mc.mean() - analytic[0]).item() < 4.5 * mc.std().item() / math.sqrt(len(mc))
    assert (analytic > 0).all()


def test_the_uniform_prior_s_density_is_one_over_the_area_and_its_samples_are_uniform():
    assert math.exp(sphere_log_area(3)) == pytest.approx(4 * math.pi)
    assert math.exp(sphere_log_area(2)) == pytest.approx(2 * math.pi)
    p = UniformSphere(3, torch.zeros(()))
    torch.manual_seed(3)
    z = p.sample((20000,))
    assert torch.allclose(z.norm(dim=-1), torch.ones(20000), atol=1e-6)
    # Archimedes: each coordinate of a uniform point on S^2 is uniform on [-1, 1].
    assert stats.kstest(z[:, 0].numpy(), "uniform", args=(-1, 2)).pvalue > 1e-3


def test_the_gradient_to_the_mean_direction_is_exact():
    """d/dh E[a^T z] with mu = h / |h| is A_m(kappa) (I - mu mu^T) a / |h|: the reflection is
    differentiable and z's law is equivariant, so the pathwise gradient is unbiased."""
    kappa, n = 3.0, 200000
    h = torch.tensor([0.3, -1.2, 0.5, 0.9, 0.1], dtype=F64, requires_grad=True)
    a = torch.tensor([1.0, 0.5, -0.7, 0.2, 0.4], dtype=F64)
    torch.manual_seed(4)
    mu = h / h.norm()
    q = VMF(mu, torch.tensor(kappa, dtype=F64))
    (grad,) = torch.autograd.grad((q.rsample((n,)) @ a).mean(), h)
    with torch.no_grad():
        mu = h / h.norm()
        expected = q.mean_resultant() * (a - (mu @ a) * mu) / h.norm()
    assert torch.allclose(grad, expected, atol=3e-3)


def _kappa_gradients(m, kappa, gradient, n=200000, seed=5):
    """Per draw, d(mu^T z)/dkappa through rsample (each draw with its own copy of kappa), and
    the exact d E[mu^T z] / d kappa = A_m'(kappa) = 1 - A^2 - (m - 1) A / kappa."""
    k = torch.full((n,), kappa, dtype=F64, requires_grad=True)
    mu = torch.zeros(n, m, dtype=F64)
    mu[:, 0] = 1
    torch.manual_seed(seed)
    (grad,) = torch.autograd.grad(VMF(mu, k, gradient=gradient).rsample()[:, 0].sum(), k)
    a = bessel_ratio(torch.tensor(kappa, dtype=F64), m / 2 - 1)
    return grad, (1 - a**2 - (m - 1) / kappa * a).item()


@pytest.mark.parametrize("m, kappa", [(2, 0.3), (2, 10.0), (3, 1.0), (10, 10.0), (50, 1.0),
                                      (50, 100.0), (5, 3000.0)])
def test_the_implicit_gradient_to_kappa_is_unbiased(m, kappa):
    """E[dw/dkappa] = d E[w] / d kappa: the implicit reparameterization of w, within 4.5
    standard errors of A_m'(kappa) over 200,000 draws, from the circle to S^49."""
    grad, exact = _kappa_gradients(m, kappa, "implicit")
    assert torch.isfinite(grad).all()
    assert abs(grad.mean().item() - exact) < 4.5 * grad.std().item() / math.sqrt(len(grad)) + 1e-9


def test_the_implicit_gradient_is_the_closed_form_on_s2():
    """On S^2, q_w(t) = kappa e^(kappa t) / (2 sinh kappa): dw/dkappa =
    -[e^(kappa (t - w)) ((t - A) / kappa - 1 / kappa^2)]_{t=-1}^{w}."""
    from vae_lightning.posteriors.von_mises_fisher import dw_dkappa

    kappa = 10.0
    a = bessel_ratio(torch.tensor(kappa, dtype=F64), 0.5).item()
    w = torch.tensor([-0.9, -0.5, 0.0, 0.5, 0.9, 0.99], dtype=F64)

    def antiderivative(t, at):
        return math.exp(kappa * (t - at)) * ((t - a) / kappa - 1 / kappa**2)

    closed = [-(antiderivative(x, x) - antiderivative(-1.0, x)) for x in w.tolist()]
    ours = dw_dkappa(w, 1 - w, torch.full_like(w, kappa), torch.full_like(w, a), 3)
    assert torch.allclose(ours, torch.tensor(closed, dtype=F64), rtol=1e-12, atol=1e-15)


def test_the_paper_s_g_rep_is_biased_and_its_bias_falls_with_m():
    """``gradient=g_rep``: through w = h(eps, kappa) at the accepted eps alone (Davidson et
    al.'s code leaves out g_cor): about a fifth low on S^2 at kappa = 1, within 1 % on S^49."""
    low, exact_low = _kappa_gradients(3, 1.0, "g_rep")
    assert 0.1 < 1 - low.mean().item() / exact_low < 0.3
    high, exact_high = _kappa_gradients(50, 1.0, "g_rep")
    assert abs(high.mean().item() / exact_high - 1) < 0.01


def test_the_iw_estimate_of_a_toy_model_tends_to_its_closed_form_log_p_of_x():
    """p(z) uniform on S^2, p(x|z) = N(x; z, s^2 I_3): log p(x) = log E_p[N(x; z, s^2 I)] has the
    closed form via the vMF normaliser (the integrand is exp(x^T z / s^2) times constants); with
    q = vMF(x / |x|, |x| / s^2), the exact posterior, every importance weight is p(x)."""
    s = 0.7
    x = torch.tensor([[0.4, -0.9, 0.3], [1.5, 0.2, -0.1]], dtype=F64)
    kappa = x.norm(dim=-1) / s**2
    posterior = VMF(x / x.norm(dim=-1, keepdim=True), kappa)
    prior = UniformSphere(3, torch.zeros((), dtype=F64))
    # N(x; z, s^2 I) = (2 pi s^2)^(-3/2) exp(-(|x|^2 + 1) / (2 s^2)) exp(x^T z / s^2), and
    # E_p[exp(kappa mu^T z)] = 1 / (C_3(kappa) |S^2|).
    log_px = (-1.5 * math.log(2 * math.pi * s**2) - (x.pow(2).sum(-1) + 1) / (2 * s**2)
              - posterior.log_normalizer() - sphere_log_area(3))

    def log_lik(z):
        return (-1.5 * math.log(2 * math.pi * s**2)
                - (x - z).pow(2).sum(-1) / (2 * s**2))

    torch.manual_seed(6)
    z = posterior.sample((8,))
    log_w = log_lik(z) + prior.log_prob(z) - posterior.log_prob(z)
    assert torch.allclose(iw_bound(log_w), log_px, atol=1e-10)
    # A worse q (a tenth of the concentration): the bound rises towards log p(x) with k.
    rough = VMF(posterior.loc, kappa / 10)
    bounds = []
    for k in (1, 10, 1000):
        torch.manual_seed(7)
        z = rough.sample((k, 4000))  # [k, repeats, 2, 3]
        log_w = log_lik(z) + prior.log_prob(z) - rough.log_prob(z)
        bounds.append(iw_bound(log_w).mean(0))
    assert (bounds[0] < bounds[1]).all() and (bounds[1] < bounds[2]).all()
    assert torch.allclose(bounds[2], log_px, atol=0.02)


def test_the_family_maps_network_outputs_to_a_unit_mean_and_a_concentration_above_one():
    family = VonMisesFisher()
    assert family.n_params(4) == 5
    q = family(torch.tensor([[3.0, 4.0, 0.0, 0.0, -20.0], [0.0, 0.0, 0.0, 2.0, 5.0]]))
    assert torch.allclose(q.loc.norm(dim=-1), torch.ones(2))
    assert (q.concentration >= 1).all() and q.concentration[1] > 5
    assert torch.equal(family.location(q), q.loc)
    assert q.gradient == "implicit"
    assert VonMisesFisher("g_rep")(torch.ones(1, 5)).gradient == "g_rep"
    with pytest.raises(ArgumentError, match="gradient"):
        VonMisesFisher("score")
    with pytest.raises(ValueError, match="model.latent=1.*>= 2"):
        family.n_params(1)


def test_svae_composes_and_mismatched_pairs_are_refused_with_the_fix(tmp_path):
    overrides = ["data=frey", "model.latent=3", "model.encoder.net.hidden=[8]",
                 "model.decoder.net.hidden=[8]"]
    run = build_run(compose_train([*overrides, "model=svae"], tmp_path))
    assert isinstance(run.model.prior, HypersphericalUniform)
    run.datamodule.setup("fit")
    x, _ = run.datamodule.to_inputs(next(iter(run.datamodule.train_dataloader())))
    bound = run.model.bound(x[:8])
    assert torch.isfinite(bound.elbo).all() and (bound.kl > 0).all()
    with pytest.raises(ConfigError, match="VonMisesFisher needs the prior.*use model=svae"):
        build_run(compose_train([*overrides, "model/posterior=von_mises_fisher"], tmp_path))
    with pytest.raises(ConfigError, match="HypersphericalUniform needs the posterior.*sphere"):
        build_run(compose_train([*overrides, "model/prior=hyperspherical_uniform"], tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(),
                    reason="needs ../shared/data/mnist (the shared data folder)")
def test_the_svae_preset_trains_on_mnist(tmp_path):
    """The S-VAE preset, 300 steps on MNIST: the loss falls and the test bound is finite."""
    rows = short_mnist_run(["experiment=svae_mnist", "callbacks.figures=null"], tmp_path)
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert losses[-1] < losses[0] - 50
    test = [r for r in rows if r.get("test/elbo")][-1]
    assert math.isfinite(float(test["test/elbo"]))


def test_gradients_stay_finite_where_a_draw_rounds_to_the_pole(monkeypatch):
    """On the circle eps ~ Beta(1/2, 1/2) falls within float32 rounding of 1 about once in 6,000
    draws: w = -1 and sqrt(1 - w^2) = 0 there, and its gradient must not be 0 / 0."""
    kappa = torch.tensor([3.0, 3.0, 3.0, 3.0], requires_grad=True)
    loc = torch.tensor([[0.6, 0.8]] * 4, requires_grad=True)
    q = VMF(loc, kappa)
    extreme = torch.tensor([1.0 - 1e-9, 1e-300, 0.5, 1.0], dtype=F64)
    monkeypatch.setattr(VMF, "_accepted_eps", lambda self, k, b: extreme)
    z = q.rsample()
    assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-6)
    (z @ torch.tensor([1.0, -2.0])).sum().backward()
    assert torch.isfinite(kappa.grad).all() and torch.isfinite(loc.grad).all()


def test_active_units_count_the_mean_a_m_kappa_mu_not_the_direction():
    """Burda's statistic is Cov_x(E_q[z_j]): for a vMF E_q[z] = A_m(kappa) mu. A posterior of
    concentration ~1 (near-uniform on the sphere, A_m ~ 0.1 in 10 dimensions) whose direction
    follows x carries almost nothing, and is counted as 0 active units, not 10; the same
    directions at a high concentration are all active."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from models import binary_images, small_vae

    from vae_lightning.log_likelihood import evaluate

    m, counts = 10, {}
    for raw in (-20.0, 50.0):  # kappa = 1 + softplus(raw): ~1, ~51
        torch.manual_seed(0)
        model = small_vae(latent=m, hidden=(16,), posterior=VonMisesFisher(),
                          prior=HypersphericalUniform(m))
        with torch.no_grad():
            last = [mod for mod in model.encoder.net.modules()
                    if isinstance(mod, torch.nn.Linear)][-1]
            last.weight[-1].zero_()
            last.bias[-1] = raw
            last.weight[:-1] *= 5  # directions that vary with x
        x = binary_images(400)
        model.eval()
        torch.manual_seed(1)
        counts[raw] = evaluate(model, [x[i:i + 100] for i in range(0, 400, 100)], k=5)
        with torch.no_grad():
            q = model.encoder(x)
            burda = int((q.mean.double().var(0) > 0.01).sum())
        assert counts[raw]["active_units"] == burda
    assert counts[-20.0]["active_units"] == 0 and counts[50.0]["active_units"] == m
