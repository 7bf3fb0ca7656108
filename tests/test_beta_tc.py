"""beta-TC-VAE (Chen et al. 2018): the minibatch estimators of the KL's three terms against their
exact values for a data set of N points with known Gaussian posteriors (q(z) = (1/N) sum_n
q(z|n) exactly), the identity that the three terms add up to the KL, the loss, and what the
model refuses."""

import math
from types import SimpleNamespace

import pytest
import torch
from compose import compose_train
from models import binary_images, small_vae
from torch.distributions import Independent, Normal, kl_divergence
from torch.testing import assert_close

from vae_lightning.config_checks import check
from vae_lightning.errors import ConfigError
from vae_lightning.objectives.beta_tc import BetaTC, decompose, log_weights
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.kl_schedule import Linear
from vae_lightning.posteriors.planar import Planar
from vae_lightning.priors import MixtureOfGaussians
from vae_lightning.train import build_run, train

N, LATENT = 400, 2
PRIOR = Independent(Normal(torch.zeros(LATENT), torch.ones(LATENT)), 1)


def _posteriors(seed=0):
    """N posteriors N(mu_n, sigma_n^2 I) whose means are correlated across the two dimensions
    (so the total correlation is well above 0)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(N, LATENT, generator=g) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]])
    sigma = 0.2 + 0.3 * torch.rand(N, LATENT, generator=g)
    return mu, sigma


def _terms(mu, sigma, z, log_w=None):
    """Per sample z ``[..., LATENT]`` (of the posterior (mu, sigma) of the same shape): MI, TC
    and dimension-wise KL ``[..., 3]``, with q(z) and q(z_j) from the minibatch's posteriors
    weighted by ``log_w`` (``decompose``), or, without it, from all N points (exact)."""
    if log_w is not None:
        q = Independent(Normal(mu, sigma, validate_args=False), 1)
        return torch.stack(decompose(q, PRIOR, z, log_w), -1)
    data_mu, data_sigma = _posteriors()
    own = Normal(mu, sigma).log_prob(z).sum(-1)
    log_q = Normal(data_mu, data_sigma).log_prob(z.unsqueeze(-2))  # [..., n, j]
    log_qz = torch.logsumexp(log_q.sum(-1), -1) - math.log(N)
    log_marginals = (torch.logsumexp(log_q, -2) - math.log(N)).sum(-1)
    return torch.stack([own - log_qz, log_qz - log_marginals, log_marginals - PRIOR.log_prob(z)],
                       -1)


def _estimator_error(m, estimator, samples=4000):
    """The mean of (estimate - exact value) of each term, at the same samples z_i ~ q(z|x_i),
    over minibatches of ``m`` of the N points drawn uniformly without replacement."""
    mu, sigma = _posteriors()
    batches = torch.rand(samples // m, N).argsort(1)[:, :m]
    mu, sigma = mu[batches], sigma[batches]
    z = mu + sigma * torch.randn_like(mu)
    estimate = torch.func.vmap(_terms, in_dims=(0, 0, 0, None))(
        mu, sigma, z, log_weights(m, estimator, N))
    return (estimate - _terms(mu, sigma, z)).mean((0, 1))


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_the_estimators_converge_to_the_exact_terms_as_the_minibatch_grows(estimator):
    torch.manual_seed(0)
    mu, sigma = _posteriors()
    z = mu + sigma * torch.randn(10, N, LATENT)
    exact = _terms(mu, sigma, z).mean((0, 1))
    assert exact[1] > 0.2  # the means' correlation gives a total correlation to find
    errors = {m: _estimator_error(m, estimator).abs() for m in (10, 50, N)}
    assert errors[N].max() < 0.01, (exact, errors[N])  # the whole data set: exact
    assert errors[10].sum() > errors[50].sum() > 5 * errors[N].sum(), errors
    assert errors[50].max() < 0.15 * exact.sum(), (exact, errors)


def test_the_three_terms_add_up_to_the_kl():
    """Per sample, MI + TC + DWKL = log q(z|x) - log p(z) whatever the weights; its mean over
    many samples is the average closed-form KL."""
    torch.manual_seed(1)
    mu, sigma = _posteriors(seed=1)
    q = Independent(Normal(mu, sigma), 1)
    z = q.sample()
    for estimator in ("mws", "mss"):
        mi, tc, dwkl = decompose(q, PRIOR, z, log_weights(N, estimator, N))
        assert_close(mi + tc + dwkl, q.log_prob(z) - PRIOR.log_prob(z))
    z = q.sample((200,))
    assert_close((q.log_prob(z) - PRIOR.log_prob(z)).mean(), kl_divergence(q, PRIOR).mean(),
                 atol=0.02, rtol=0)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_each_row_of_weights_is_a_mixture(estimator):
    m, n = 6, 50
    w = log_weights(m, estimator, n).exp()
    assert_close(w.sum(1), torch.ones(m))
    if estimator == "mss":  # App. C.2: 1/N for the point itself, (N - M + 1)/(N (M - 1)) for
        i = torch.arange(m)  # the next, 1/(M - 1) for the rest
        assert_close(w[i, i], torch.full((m,), 1 / n))
        assert_close(w[i, (i + 1) % m], torch.full((m,), (n - m + 1) / (n * (m - 1))))
        assert_close(w[0, 3], torch.tensor(1 / (m - 1)))
    assert torch.equal(log_weights(1, estimator, n), torch.zeros(1, 1))


def _loss(objective, model, x, seed=5):
    torch.manual_seed(seed)
    return objective.loss(model, x)


def test_the_loss_weights_the_terms_and_the_bound_is_the_true_elbo():
    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(32)
    loss, bound = _loss(BetaTC(alpha=2.0, beta=5.0, gamma=0.5), model, x)
    torch.manual_seed(5)
    elbo = ELBO().bound(model, x)
    assert torch.equal(bound.elbo, elbo.elbo)  # logged: the ELBO, analytic KL, same sample
    torch.manual_seed(5)
    q = model.encoder(x)
    z = q.rsample()
    mi, tc, dwkl = decompose(q, model.prior.distribution(), z, log_weights(32, "mws", None))
    assert_close(loss, -(elbo.recon - 2.0 * mi - 5.0 * tc - 0.5 * dwkl).mean())
    assert BetaTC().logged() == {}  # nothing before a step
    objective = BetaTC()
    _loss(objective, model, x)
    assert set(objective.logged()) == {"mi", "tc", "dwkl"}
    assert all(v.dim() == 0 and not v.requires_grad for v in objective.logged().values())
    # alpha = beta = gamma = 1: the ELBO by estimator A (the terms add up to the MC KL)
    loss_1, _ = _loss(BetaTC(beta=1.0), model, x)
    torch.manual_seed(5)
    q = model.encoder(x)
    z = q.rsample()
    mc = q.log_prob(z) - model.prior.log_prob(z)
    assert_close(loss_1, -(elbo.recon - mc).mean())


def test_the_kl_schedule_scales_the_three_terms():
    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(16)
    objective = BetaTC(kl_schedule=Linear(10))
    assert objective.step_dependent and not BetaTC().step_dependent
    loss_0, bound = _loss(objective, model, x)  # a model without a trainer is at step 0
    assert_close(loss_0, -bound.recon.mean())
    model._trainer = SimpleNamespace(global_step=10)
    assert_close(_loss(objective, model, x)[0], _loss(BetaTC(), model, x)[0])


def test_mss_needs_the_data_set_size_and_one_that_fits_the_minibatch(tmp_path):
    with pytest.raises(ConfigError, match="model.objective.dataset_size=null"):
        build_run(compose_train(["model/objective=beta_tc", "model.objective.estimator=mss",
                             "logger=none"], tmp_path))
    torch.manual_seed(0)
    model, x = small_vae(latent=2), binary_images(32)
    with pytest.raises(ConfigError, match="dataset_size=10 is smaller than the minibatch"):
        BetaTC(estimator="mss", dataset_size=10).loss(model, x)


@pytest.mark.parametrize("parts, words", [
    ({"prior": MixtureOfGaussians}, ["MixtureOfGaussians", "factorized"]),
    ({"posterior": Planar()}, ["Planar", "density", "factorized"]),
])
def test_parts_without_densities_or_factors_are_refused_when_composed(parts, words):
    with pytest.raises(ValueError) as err:
        small_vae(objective=BetaTC(), **parts)
    for word in words:
        assert word in str(err.value)


def test_the_dsprites_preset_composes_and_checks(tmp_path):
    cfg = compose_train(["experiment=beta_tc_dsprites"], tmp_path)
    check(cfg)
    objective = cfg.model.objective
    assert (objective.beta, objective.estimator, objective.dataset_size) == (6.0, "mss", 717280)


@pytest.mark.slow
def test_beta_tc_trains_from_the_config_group(tmp_path):
    cfg = compose_train(["model/objective=beta_tc", "model.latent=2", "trainer.max_epochs=2",
                         "logger=none", "callbacks.figures.n_points=0",
                         "trainer.enable_progress_bar=false"], tmp_path)
    results = train(cfg)
    assert results["objective"] == "beta_tc" and results["status"] == "completed"
    assert results["test/elbo"] > results["initial/val_elbo"]
