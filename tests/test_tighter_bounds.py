"""MIWAE, PIWAE and CIWAE (Rainforth et al. 2018, "Tighter variational bounds are not necessarily
better"): their bounds against a direct computation from the log-weights, ordered between the
ELBO and IWAE as Jensen's inequality puts them on the same samples, PIWAE's split gradients
(theta on IWAE, phi on MIWAE), and that they train."""

import math

import pytest
import torch
from models import binary_images, small_vae
from objective_checks import fit
from torch.testing import assert_close

from vae_lightning.likelihoods import GaussianFixed
from vae_lightning.objectives import draw, iw_bound
from vae_lightning.objectives.ciwae import CIWAE
from vae_lightning.objectives.iwae import IWAE
from vae_lightning.objectives.miwae import MIWAE, miwae_bound
from vae_lightning.objectives.piwae import PIWAE
from vae_lightning.posteriors.planar import Planar

M, K = 3, 4


def _log_w(model, x, n, seed=3):
    torch.manual_seed(seed)
    return draw(model, x, model.encoder(x), model.prior.distribution(), n)


def _miwae_direct(log_w, m):
    """(1/M) sum_m log (1/K) sum_k w_mk, group by group, in float64."""
    w, k = log_w.double().exp(), log_w.shape[0] // m
    return sum(torch.log(w[g * k:(g + 1) * k].mean(0)) for g in range(m)) / m


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return small_vae(latent=3), binary_images(32)


def test_miwae_is_the_mean_of_m_iwae_bounds_and_sits_between_elbo_and_iwae(setup):
    model, x = setup
    log_w = _log_w(model, x, M * K).log_w
    miwae = miwae_bound(log_w, M)
    assert_close(miwae.double(), _miwae_direct(log_w, M))
    elbo, iwae = log_w.mean(0), iw_bound(log_w)
    assert (elbo <= miwae + 1e-5).all() and (miwae <= iwae + 1e-5).all()
    assert (iwae - elbo).min() > 1e-3  # a strict ordering to check
    assert_close(miwae_bound(log_w, 1), iwae)  # M = 1: IWAE with M K samples
    assert_close(miwae_bound(log_w, M * K), elbo)  # K = 1: the ELBO (estimator A)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_ciwae_is_the_convex_combination_of_elbo_and_iwae(setup, beta):
    model, x = setup
    samples = _log_w(model, x, K)
    elbo, iwae = samples.log_w.mean(0), iw_bound(samples.log_w)
    torch.manual_seed(3)
    loss, logged = CIWAE(k=K, beta=beta).loss(model, x)
    assert_close(loss, -(beta * elbo + (1 - beta) * iwae).mean())
    assert_close(logged.elbo, samples.bound().elbo)  # the ELBO of the same samples
    assert -iwae.mean() - 1e-5 <= loss <= -elbo.mean() + 1e-5


def test_the_bounds_tighten_in_expectation_as_theory_orders_them(setup):
    """Averaged over many draws: ELBO <= MIWAE_{M,K} <= IWAE_{M K}, and IWAE_K <= IWAE_{M K}."""
    model, x = setup
    log_w = _log_w(model, x[:4], 2000 * M * K).log_w.unflatten(0, (2000, M * K)).transpose(0, 1)
    elbo = log_w.mean(0).mean(0)
    miwae = torch.stack([miwae_bound(w, M) for w in log_w.unbind(1)]).mean(0)
    iwae_k = iw_bound(log_w[:K]).mean(0)
    iwae_mk = iw_bound(log_w).mean(0)
    assert (elbo < miwae).all() and (miwae < iwae_mk).all() and (iwae_k < iwae_mk).all()


def test_miwae_s_loss_is_its_negative_bound(setup):
    model, x = setup
    samples = _log_w(model, x, M * K)
    torch.manual_seed(3)
    loss, logged = MIWAE(m=M, k=K).loss(model, x)
    assert_close(loss, -miwae_bound(samples.log_w, M).mean())
    assert_close(logged.elbo, samples.bound().elbo)


def _gradients(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_piwae_trains_the_decoder_on_iwae_and_the_encoder_on_miwae(setup):
    """With the same samples: PIWAE's value is IWAE_{M K}'s; its decoder (and prior) gradient is
    IWAE_{M K}'s, its encoder gradient MIWAE_{M,K}'s."""
    model, x = setup
    torch.manual_seed(3)
    loss, logged = PIWAE(m=M, k=K).loss(model, x)
    piwae = _gradients(model, loss)
    torch.manual_seed(3)
    iwae_loss, _ = IWAE(k=M * K).loss(model, x)
    iwae = _gradients(model, iwae_loss)
    torch.manual_seed(3)
    miwae = _gradients(model, MIWAE(m=M, k=K).loss(model, x)[0])
    assert_close(loss, iwae_loss)
    assert_close(logged.elbo, _log_w(model, x, M * K).bound().elbo)
    assert piwae.keys() == iwae.keys()
    for name, grad in piwae.items():
        expected = miwae[name] if name.startswith("encoder.") else iwae[name]
        assert_close(grad, expected, atol=1e-5, rtol=1e-4, msg=name)
    differs = [n for n in piwae if n.startswith("encoder.")
               and not torch.allclose(iwae[n], miwae[n], atol=1e-4)]
    assert differs  # the two encoder gradients do differ: the split is seen


@pytest.mark.parametrize("parts", ["planar", "spread"])
def test_piwae_s_split_holds_for_flows_and_log_weights_far_apart(parts):
    """The decoder on IWAE's gradient, the encoder on MIWAE's, also where log q(z|x) comes with
    the draw (a planar flow) and where the log-weights lie hundreds of nats apart (a Gaussian
    decoder with sigma = 0.02 on binary pixels), where IWAE's weight of a whole group of
    samples is below float32's range while MIWAE's is not: a one-pass variant that rescaled
    IWAE's gradient per group got 0 x inf there (NaN weights on Frey Face in 5 steps)."""
    torch.manual_seed(0)
    model = (small_vae(latent=3, posterior=Planar(length=2)) if parts == "planar"
             else small_vae(latent=3, likelihood=GaussianFixed(sigma=0.02)))
    x = binary_images(16)
    grads = {}
    for name, objective in (("piwae", PIWAE(m=M, k=K)), ("iwae", IWAE(k=M * K)),
                            ("miwae", MIWAE(m=M, k=K))):
        torch.manual_seed(5)
        grads[name] = _gradients(model, objective.loss(model, x)[0])
    if parts == "spread":
        torch.manual_seed(5)
        log_w = _log_w(model, x, M * K, seed=5).log_w
        groups = log_w.unflatten(0, (M, K)).logsumexp(1)
        assert (log_w.logsumexp(0) - groups).max() > 120  # a group beyond float32's exp
    for name, grad in grads["piwae"].items():
        assert torch.isfinite(grad).all(), name
        expected = grads["miwae" if name.startswith("encoder.") else "iwae"][name]
        assert_close(grad, expected, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("objective", [MIWAE(m=2, k=4), PIWAE(m=2, k=4), CIWAE(k=8)], ids=repr)
def test_it_trains(objective):
    result = fit(objective)
    assert result.loss_after < result.loss_before - 0.5, result
    assert result.elbo_after > result.elbo_before + 0.5, result


def test_the_bound_names_its_math():
    """K = 1 makes MIWAE the ELBO by estimator A with M samples: log w averaged."""
    log_w = torch.tensor([[0.0], [math.log(3.0)]])
    assert_close(miwae_bound(log_w, 2), torch.tensor([math.log(3.0) / 2]))
    assert_close(miwae_bound(log_w, 1), torch.tensor([math.log(2.0)]))
