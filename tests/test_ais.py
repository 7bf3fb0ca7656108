"""Annealed importance sampling (vae_lightning.ais): on a linear-Gaussian model whose log p(x) and
posterior are known in closed form, AIS reaches log p(x) where the IW estimate of a poor q does
not, tightens with the number of annealing steps and stays below log p(x) up to its Monte-Carlo
error; its Hamiltonian moves leave the posterior invariant; BDMC brackets log p(x); a model of
the labels (M2) is annealed class by class and summed; models AIS cannot move in are refused."""

import math
from functools import partial

import conditional_gaussian as cg
import pytest
import torch
from linear_gaussian import set_affine
from models import binary_images, fit, small_vae
from torch.distributions import MultivariateNormal

from vae_lightning.ais import _Hamiltonian, ais, bdmc, schedule
from vae_lightning.likelihoods import Decoder, GaussianFixed
from vae_lightning.module import VAE
from vae_lightning.nets import MLP
from vae_lightning.objectives import importance_weighted
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.m2 import M2
from vae_lightning.posteriors import Encoder, Gaussian
from vae_lightning.posteriors.planar import Planar
from vae_lightning.priors import StandardNormal

LINEAR = partial(MLP, hidden=())
SHAPE = (1, 1, 4)
W = torch.tensor([[1.5, 0.0], [-0.7, 0.8], [0.3, 2.0], [1.0, -1.0]])
B = torch.tensor([0.2, -0.1, 0.4, 0.0])
S = 0.5  # p(z) = N(0, I_2), p(x|z) = N(W z + B, S^2 I_4)


def linear_model() -> VAE:
    """The linear-Gaussian model with a poor q(z|x) = N((1, 1), e^-3 I) for every x, narrow and
    off the posterior: the IW estimate's gap is then tens of nats at any practical k."""
    torch.manual_seed(0)
    encoder = Encoder(LINEAR, Gaussian(), SHAPE, latent=2)
    decoder = Decoder(LINEAR, GaussianFixed(S, mean_activation="identity"), SHAPE, latent=2)
    set_affine(decoder.net, W, B)
    set_affine(encoder.net, torch.zeros(4, 4), torch.tensor([1.0, 1.0, -3.0, -3.0]))
    return VAE(encoder, decoder, StandardNormal(2), ELBO(), latent=2, data_shape=SHAPE).eval()


def log_px(x: torch.Tensor) -> torch.Tensor:
    return MultivariateNormal(B, W @ W.T + S**2 * torch.eye(4)).log_prob(x.flatten(1))


def posterior(x: torch.Tensor) -> MultivariateNormal:
    """p(z|x) = N(C W^T (x - B) / S^2, C), C = (I + W^T W / S^2)^-1."""
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / S**2)
    return MultivariateNormal((x.flatten(1) - B) @ W @ cov / S**2, cov)


def data(n: int = 8) -> torch.Tensor:
    torch.manual_seed(1)
    z = torch.randn(n, 2)
    return (z @ W.T + B + S * torch.randn(n, 4)).reshape(n, *SHAPE)


def test_the_schedules_run_from_0_to_1_and_the_sigmoid_one_is_denser_at_the_ends():
    for kind in ("linear", "sigmoid"):
        betas = schedule(100, kind)
        assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    steps = schedule(100, "sigmoid").diff()
    assert steps[0] < steps[50] and steps[-1] < steps[50]


def monte_carlo_error(result) -> float:
    """The standard error of the mean over points of the AIS estimates, from the spread of each
    point's chains (each estimate's error about std(log w) / sqrt(chains))."""
    chains = len(result.log_w)
    per_point = result.log_w.std(0) / math.sqrt(chains)
    return per_point.pow(2).mean().sqrt().item() / math.sqrt(result.log_w.shape[1])


@pytest.mark.parametrize("start", ["prior", "posterior"])
def test_ais_reaches_the_exact_log_likelihood_where_the_iw_estimate_of_a_poor_q_does_not(start):
    model, x = linear_model(), data()
    truth = log_px(x)
    torch.manual_seed(0)
    with torch.no_grad():
        _, iw = importance_weighted(model, x, 32)
    assert (truth - iw).mean() > 10  # the same number of samples a point as AIS has chains
    torch.manual_seed(0)
    result = ais(model, x, steps=500, chains=32, leapfrog=5, start=start, step_size=0.05)
    gap, error = (truth - result.log_px).mean().item(), monte_carlo_error(result)
    assert error < 0.1 and abs(gap) < 4 * error + 0.01, (gap, error)
    assert 0.5 < result.acceptance < 0.99
    assert (result.ess > 4).all()


def test_ais_tightens_with_more_steps_and_stays_below_log_p_of_x():
    """Its gap from log p(x) falls from nats at 3 annealing steps to its Monte-Carlo error at 300
    (the gap's mean over points, 4 standard errors about 0 at most)."""
    model, x = linear_model(), data(16)
    truth = log_px(x)
    gaps = []
    for steps in (3, 300):
        torch.manual_seed(0)
        gaps.append((truth - ais(model, x, steps=steps, chains=8, leapfrog=5,
                                 step_size=0.05).log_px).double())
    few, many = (g.mean().item() for g in gaps)
    se = gaps[1].std().item() / math.sqrt(len(x))
    assert few > 1 and abs(many) < 4 * se + 0.01, (few, many, se)


def test_the_hamiltonian_moves_leave_the_posterior_invariant():
    """From exact posterior draws, 20 moves (adapting step sizes) keep the draws' mean and
    covariance those of p(z|x) within their Monte-Carlo error: the Metropolis correction makes
    the leapfrog's error harmless."""
    x = data(1)
    exact = posterior(x)
    n = 4000
    torch.manual_seed(0)
    z = exact.sample((n,)).squeeze(1)

    def target(z):  # f_beta = p_0 = p(z|x): log p_0 and a gap of zero
        log_f = exact.log_prob(z)
        return log_f, 0.0 * log_f

    hmc = _Hamiltonian(target, 5, 1, z)
    point = hmc.point(z)
    for _ in range(20):
        point = hmc.move(point, 1.0, torch.full((n,), 0.3))
    z = point.z
    mean, cov = exact.mean[0], exact.covariance_matrix[0]
    se = (cov.diagonal() / n).sqrt()
    assert ((z.mean(0) - mean).abs() < 4 * se).all(), (z.mean(0), mean)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.1 * cov.diagonal().max().item(),
                               rtol=0)
    assert 0.5 < hmc.acceptance() < 1


def test_bdmc_brackets_the_exact_log_likelihood_of_simulated_data():
    model = linear_model()
    torch.manual_seed(0)
    x, forward, reverse = bdmc(model, 12, steps=500, chains=16, leapfrog=5, step_size=0.05)
    truth = log_px(x)
    assert x.shape == (12, *SHAPE)
    lower, upper = (truth - forward.log_px).mean().item(), (reverse.log_px - truth).mean().item()
    errors = monte_carlo_error(forward), monte_carlo_error(reverse)
    assert max(errors) < 0.1, errors
    assert -4 * errors[0] < lower < 4 * errors[0] + 0.01, (lower, errors)
    assert -4 * errors[1] < upper < 4 * errors[1] + 0.01, (upper, errors)
    # With one annealing step the reverse estimate is far above and the forward far below.
    torch.manual_seed(0)
    x, forward, reverse = bdmc(model, 12, steps=1, chains=1)
    truth = log_px(x)
    assert (reverse.log_px - truth).mean() > 1 and (truth - forward.log_px).mean() > 1


def test_a_model_of_the_labels_is_annealed_class_by_class_and_summed():
    """M2 on the conditional linear-Gaussian model: log p(x) = log sum_y p(y) p(x|y)."""
    objective = M2(classes=2, data_shape=cg.SHAPE, hidden=(), kl="mc")
    model = cg.model(objective)
    x, y = cg.data()
    exact = torch.logsumexp(torch.stack([cg.log_p(x, torch.full_like(y, c)) for c in (0, 1)]),
                            0) - math.log(2)
    torch.manual_seed(0)
    result = ais(model, x, steps=300, chains=8, leapfrog=5, step_size=0.1)
    gap, error = (exact - result.log_px).mean().item(), monte_carlo_error(result)
    assert error < 0.1 and abs(gap) < 4 * error + 0.01, (gap, error)
    torch.manual_seed(0)
    given = ais(model, x, steps=300, chains=8, leapfrog=5, step_size=0.1, y=y)  # log p(x|y)
    gap, error = (cg.log_p(x, y) - given.log_px).mean().item(), monte_carlo_error(given)
    assert error < 0.1 and abs(gap) < 4 * error + 0.01, (gap, error)


def test_what_ais_cannot_run_is_refused_in_one_line():
    x = torch.zeros(2, 1, 3, 4)
    planar = small_vae(posterior=Planar(length=2))
    with pytest.raises(ValueError, match="start='posterior'.*use start='prior'"):
        ais(planar, x, steps=2, start="posterior")
    ais(planar, x, steps=2, start="prior")  # from the prior it runs
    with pytest.raises(ValueError, match="chains=0"):
        ais(small_vae(), x, steps=2, chains=0)
    with pytest.raises(ValueError, match="steps=0"):
        ais(small_vae(), x, steps=0)
    with pytest.raises(ValueError, match="schedule='cosine'"):
        ais(small_vae(), x, steps=2, kind="cosine")
    conditional = cg.model()
    with pytest.raises(ValueError, match="give the labels y"):
        ais(conditional, torch.zeros(2, *cg.SHAPE), steps=2)


def test_a_latent_space_on_the_sphere_is_refused():
    from vae_lightning.posteriors.von_mises_fisher import VonMisesFisher
    from vae_lightning.priors.hyperspherical import HypersphericalUniform

    model = small_vae(latent=3, posterior=VonMisesFisher(), prior=HypersphericalUniform(3))
    with pytest.raises(ValueError, match="confined to the unit sphere"):
        ais(model, torch.zeros(2, 1, 3, 4), steps=2)


def test_on_a_trained_vae_ais_meets_the_iw_estimate_at_k_5000_above_the_elbo():
    """A small Bernoulli VAE fitted to binary images: 200 annealing steps, 8 chains a point, reach
    the k = 5000 IW estimate (near log p(x) in 2 latent dimensions), from q(z|x) or the prior."""
    torch.manual_seed(0)
    model = small_vae(latent=2, hidden=(32,))
    fit(model, binary_images(256))
    model.eval()
    x = binary_images(32, seed=1)
    with torch.no_grad():
        elbo, iw = importance_weighted(model, x, 5000)
    model.train()  # AIS runs the model in evaluation mode, then leaves it as it was
    for start in ("posterior", "prior"):
        torch.manual_seed(0)
        result = ais(model, x, steps=200, chains=8, leapfrog=5, start=start, step_size=0.05)
        estimate = result.log_px.mean().item()
        assert abs(estimate - iw.mean().item()) < 0.05, (start, estimate, iw.mean())
        assert estimate > elbo.mean().item() + 0.1
        assert model.training


def test_bdmc_refuses_what_ais_refuses_and_a_bad_count():
    with pytest.raises(ValueError, match="leapfrog=0"):
        bdmc(small_vae(), 2, steps=2, leapfrog=0)
    with pytest.raises(ValueError, match="n=0"):
        bdmc(small_vae(), 0, steps=2)
    with pytest.raises(ValueError, match="step_size=2"):
        bdmc(small_vae(), 2, steps=2, step_size=2)
    with pytest.raises(ValueError, match="conditional model"):
        bdmc(cg.model(), 2, steps=2)


def test_over_batches_scores_every_point_and_the_time_scales_with_the_steps(monkeypatch):
    import itertools

    from vae_lightning import ais as ais_module
    from vae_lightning.ais import hours, over_batches, resolve_start

    model, x = linear_model(), data()
    torch.manual_seed(0)
    found = over_batches(model, [(x[:5], None), (x[5:], None)], steps=20, chains=4,
                         leapfrog=3, start="prior")
    assert found["log_px"].shape == (8,) and 0 < found["acceptance"] <= 1
    assert 1 <= found["ess_min"] <= 4 and found["seconds"] > 0
    clock = itertools.count(step=1.0)  # each timed run of 3 steps (2 moves): one second
    monkeypatch.setattr(ais_module.time, "perf_counter", lambda: next(clock))
    # 1,000 moves of half a second, on one batch of 8 points, then on ten.
    assert hours(model, (x, None), points=8, steps=1001, chains=4) == pytest.approx(500 / 3600)
    assert hours(model, (x, None), points=80, steps=1001, chains=4) == pytest.approx(5000 / 3600)
    assert resolve_start(model, "auto") == "posterior"
    assert resolve_start(small_vae(posterior=Planar(length=2)), "auto") == "prior"


def test_a_model_of_the_labels_enumerates_them_and_a_conditional_vae_takes_the_data_s():
    from vae_lightning.ais import _labels_for

    x, y = cg.data()
    m2 = cg.model(M2(classes=2, data_shape=cg.SHAPE, hidden=(), kl="mc"))
    assert _labels_for(m2, x, y) is None
    assert _labels_for(cg.model(), x, y) is y
    assert _labels_for(linear_model(), data(), torch.zeros(8)) is None


def test_vae_eval_names_its_own_key_where_ais_cannot_start_at_q():
    """vae-eval eval.ais_start=posterior of a model whose q has no density: the one error names
    the key to set (eval.ais_start=prior), not the Python API's argument (start='prior')."""
    from vae_lightning.errors import ConfigError
    from vae_lightning.evaluate import Evaluation

    planar = small_vae(posterior=Planar(length=2))
    evaluation = Evaluation(ais_steps=2, ais_start="posterior", max_hours=None)
    with pytest.raises(ConfigError, match=r"eval.ais_start=posterior\): .* has none .*; use "
                                          r"eval.ais_start=prior \(or auto\); or leave "
                                          r"eval.ais_steps=0\.") as refused:
        evaluation._refuse_ais(planar, (torch.zeros(2, 1, 3, 4), None), 2)
    assert "start='prior'" not in str(refused.value)
    assert Evaluation(ais_steps=2, max_hours=None)._refuse_ais(
        planar, (torch.zeros(2, 1, 3, 4), None), 2) == "prior"  # auto


def test_ais_on_stochastic_layers_reaches_their_closed_form_log_likelihood():
    """The two-layer linear-Gaussian model of tests/test_hierarchy.py (a bottom-up chain q, the
    top-down prior, the decoder reading z_1), its q perturbed: AIS from the prior or from q
    reaches log p(x) within its Monte-Carlo error."""
    import contextlib
    from types import SimpleNamespace

    from linear_gaussian import data as layered_data
    from linear_gaussian import log_px as layered_log_px
    from test_hierarchy import _model

    model = SimpleNamespace(**vars(_model(exact=False)), latent=5,
                            given=lambda y: contextlib.nullcontext())
    x = layered_data()
    for start in ("prior", "posterior"):
        torch.manual_seed(0)
        result = ais(model, x, steps=500, chains=16, leapfrog=5, start=start, step_size=0.05)
        gap, error = (layered_log_px(x) - result.log_px).mean().item(), monte_carlo_error(result)
        assert error < 0.1 and abs(gap) < 4 * error + 0.01, (start, gap, error)
