"""Posterior families: reparameterized, variance exp(log_var), and MC KL = analytic KL; the KL
is analytic exactly where torch.distributions has it, and ELBO(kl="auto") follows."""

import math
from functools import partial

import pytest
import torch
from models import small_vae
from torch.distributions import Independent, kl_divergence
from torch.testing import assert_close

from vae_lightning.nets import MLP
from vae_lightning.objectives import closed_form_kl
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.posteriors import Encoder, Gaussian, Laplace, StudentT
from vae_lightning.priors import MixtureOfGaussians, StandardNormal, VampPrior

FAMILIES = [Gaussian(), Laplace(), StudentT()]
IDS = ["gaussian", "laplace", "student_t"]
# Each family with whether torch.distributions has KL(q || N(0, I)) in closed form.
WITH_KL = [(Gaussian(), True), (Laplace(), True), (StudentT(), False)]
LATENT = 4
DATA_SHAPE = (1, 1, 5)


def _loc_log_var(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, LATENT, generator=g), torch.randn(batch, LATENT, generator=g)


def _q(family):
    return Independent(family.distribution(*_loc_log_var()), 1)


def _has_closed_form(family):
    return closed_form_kl(_q(family), StandardNormal(LATENT).distribution()) is not None


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_sample_is_reparameterized_and_gradients_reach_the_encoder(family):
    q_net = Encoder(partial(MLP, hidden=(8,)), family, DATA_SHAPE, LATENT)
    q = q_net(torch.rand(3, *DATA_SHAPE))
    assert q.has_rsample and q.event_shape == (LATENT,) and q.batch_shape == (3,)
    q.rsample((2,)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in q_net.parameters())


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_mean_is_loc_and_variance_is_exp_log_var(family):
    loc, log_var = _loc_log_var()
    q = family.distribution(loc, log_var)
    assert_close(q.mean, loc)
    assert_close(q.variance, log_var.exp())


def test_student_t_with_infinite_variance_uses_sigma_as_scale():
    loc, log_var = _loc_log_var()
    q = StudentT(df=1.0).distribution(loc, log_var)
    assert_close(q.scale, (0.5 * log_var).exp())
    with pytest.raises(ValueError, match="df"):
        StudentT(df=0.0)


@pytest.mark.parametrize("family, analytic", WITH_KL, ids=IDS)
def test_closed_form_kl_is_torch_kl_to_a_standard_normal_exactly_where_torch_has_it(family,
                                                                                    analytic):
    q = _q(family)
    p = StandardNormal(LATENT).distribution()
    try:
        reference = kl_divergence(q, p)
    except NotImplementedError:
        reference = None
    assert (reference is not None) is analytic
    kl = closed_form_kl(q, p)
    if reference is None:
        assert kl is None
    else:
        assert torch.equal(kl, reference)


@pytest.mark.parametrize("prior", [MixtureOfGaussians, VampPrior])
@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_no_closed_form_kl_to_a_mixture_prior(family, prior):
    torch.manual_seed(0)
    vae = small_vae(DATA_SHAPE, LATENT, posterior=family, prior=prior)
    q = vae.encoder(torch.rand(3, *DATA_SHAPE))
    assert closed_form_kl(q, vae.prior.distribution()) is None


@pytest.mark.parametrize("family, analytic", WITH_KL, ids=IDS)
def test_auto_kl_is_estimator_b_where_analytic_and_estimator_a_otherwise(family, analytic):
    torch.manual_seed(0)
    vae = small_vae(DATA_SHAPE, LATENT, posterior=family, objective=ELBO(n_samples=3, kl="auto"))
    x = torch.rand(6, *DATA_SHAPE).round()
    q, p = vae.encoder(x), vae.prior.distribution()
    torch.manual_seed(7)
    bound = vae.bound(x)
    if analytic:  # estimator B: the KL is deterministic and exact
        assert torch.equal(bound.kl, kl_divergence(q, p))
        torch.manual_seed(8)
        assert torch.equal(vae.bound(x).kl, bound.kl)
    else:  # estimator A: the KL is the mean of log q - log p over the same samples
        torch.manual_seed(7)
        z = q.rsample((3,))
        assert_close(bound.kl, (q.log_prob(z) - p.log_prob(z)).mean(0))
        assert_close(bound.recon, vae.decoder(z).log_prob(x).mean(0))


@pytest.mark.parametrize("family", [f for f in FAMILIES if _has_closed_form(f)])
def test_monte_carlo_kl_matches_analytic_kl_within_four_standard_errors(family):
    torch.manual_seed(0)
    q = _q(family)
    p = StandardNormal(LATENT).distribution()
    n = 200_000
    z = q.sample((n,))
    terms = q.log_prob(z) - p.log_prob(z)  # [n, batch]
    err = (terms.mean(0) - kl_divergence(q, p)).abs()
    assert (err < 4 * terms.std(0) / math.sqrt(n)).all(), err


def test_a_q_without_a_closed_form_mean_says_what_stands_for_it():
    """q.mean of a flow or of stochastic layers: an error naming model.encoder.location(q), not
    torch's bare NotImplementedError; the location itself is defined."""
    from vae_lightning.posteriors.hierarchy import BottomUp
    from vae_lightning.posteriors.planar import Planar

    for family in (Planar(length=2), BottomUp(layers=[3, 2], net=partial(MLP, hidden=(4,)))):
        latent = 4 if isinstance(family, Planar) else 5
        q = family(torch.randn(6, family.n_params(latent)))
        with pytest.raises(NotImplementedError, match=r"model\.encoder\.location\(q\)"):
            _ = q.mean
        assert family.location(q).shape == (6, latent)
