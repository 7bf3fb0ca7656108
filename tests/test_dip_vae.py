"""DIP-VAE I and II (Kumar et al. 2018): the covariances they regularise against independent
computations (torch.cov of the means; the covariance of samples of the minibatch's aggregate
posterior), the penalty, the loss, the parts they need, and that they train."""

import pytest
import torch
from compose import compose_train
from models import binary_images, small_vae
from objective_checks import fit
from torch.testing import assert_close

from vae_lightning.objectives.dip_vae import DIPVAE, covariance, penalties
from vae_lightning.objectives.regularized import sample_bound
from vae_lightning.posteriors import StudentT
from vae_lightning.priors import VampPrior
from vae_lightning.train import build_run


def test_dip_i_s_covariance_is_that_of_the_posterior_means():
    torch.manual_seed(0)
    mu = torch.randn(50, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]])
    assert_close(covariance(mu), torch.cov(mu.T, correction=0))


def test_dip_ii_s_covariance_is_that_of_z_under_the_aggregate_posterior():
    """E[Sigma] + Cov[mu] against the covariance of many samples of (1/M) sum_m q(z|x_m)."""
    torch.manual_seed(0)
    mu, sigma = torch.randn(20, 3), 0.2 + torch.rand(20, 3)
    z = mu + sigma * torch.randn(20000, 20, 3, dtype=torch.float64)
    sampled = torch.cov(z.reshape(-1, 3).T, correction=0).float()
    assert_close(covariance(mu, sigma**2), sampled, atol=0.02, rtol=0)


def test_the_penalties_are_the_off_diagonal_and_the_diagonal_s_distance_to_the_identity():
    cov = torch.tensor([[2.0, 0.5, -1.0], [0.5, 1.0, 0.0], [-1.0, 0.0, 0.5]])
    off_diagonal, diagonal = penalties(cov)
    assert_close(off_diagonal, torch.tensor(2 * (0.25 + 1.0)))
    assert_close(diagonal, torch.tensor(1.0 + 0.0 + 0.25))
    assert_close(penalties(torch.eye(4)), (torch.tensor(0.0), torch.tensor(0.0)))


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_the_loss_is_the_negative_elbo_plus_the_weighted_penalties(kind):
    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(32)
    objective = DIPVAE(kind=kind, lambda_od=3.0, lambda_d=5.0)
    torch.manual_seed(3)
    _, q, _, bound = sample_bound(model, x)
    cov = covariance(q.mean, q.variance if kind == "ii" else None)
    off_diagonal, diagonal = penalties(cov)
    torch.manual_seed(3)
    loss, logged = objective.loss(model, x)
    assert_close(loss, -bound.elbo.mean() + 3.0 * off_diagonal + 5.0 * diagonal)
    assert_close(logged.elbo, bound.elbo)
    assert_close(objective.logged()["dip_offdiag"], off_diagonal.detach())


def test_dip_ii_needs_a_factorized_posterior_with_a_variance():
    """A Student-t with df <= 2 (a VampPrior's family) has no variance: DIP-VAE-II is refused
    when the model is composed, DIP-VAE-I (the means only) is not."""
    with pytest.raises(ValueError, match=r"objective DIPVAE\(kind='ii'.*finite_variance"):
        small_vae(posterior=StudentT(df=1.5), prior=VampPrior, objective=DIPVAE(kind="ii"))
    small_vae(posterior=StudentT(df=1.5), prior=VampPrior, objective=DIPVAE(kind="i"))


@pytest.mark.parametrize("option, kind, lambda_d", [("dip_vae_i", "i", 100.0),
                                                     ("dip_vae_ii", "ii", 10.0)])
def test_the_options_carry_the_paper_s_weights(option, kind, lambda_d, tmp_path):
    objective = build_run(compose_train([f"model/objective={option}", "logger=none"],
                                    tmp_path)).model.objective
    assert (objective.kind, objective.lambda_od, objective.lambda_d) == (kind, 10.0, lambda_d)


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_it_trains_and_moves_the_covariance_to_the_identity(kind):
    objective = DIPVAE(kind=kind, lambda_od=10.0, lambda_d=10.0)
    result = fit(objective)
    assert result.loss_after < result.loss_before - 0.1, result
    assert result.elbo_after > result.elbo_before + 0.1, result
