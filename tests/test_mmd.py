"""The unbiased MMD^2 estimator against its closed form for Gaussians (RBF and inverse
multiquadratic kernels), and the two objectives built on it: InfoVAE / MMD-VAE (Zhao et al.
2017) and WAE-MMD (Tolstikhin et al. 2018)."""

import math
import re

import pytest
import torch
from models import binary_images, small_vae
from objective_checks import fit
from scipy.integrate import quad
from torch.testing import assert_close

from vae_lightning.args import ArgumentError
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.info_vae import InfoVAE
from vae_lightning.objectives.mmd import default_bandwidth, kernel_matrix, mmd2
from vae_lightning.objectives.regularized import sample_bound
from vae_lightning.objectives.wae import WAE

D, C = 2, 4.0  # dimensions; the bandwidth 2 d sigma_z^2


def _mean_kernel(kernel, mean, var):
    """E k(x, y) where x - y ~ N(mean, var I_D), by E exp(-t ||u||^2) = (1 + 2 t var)^(-D/2)
    exp(-t ||mean||^2 / (1 + 2 t var)): at t = 1/C for the RBF kernel; for the IMQ kernel
    C / (C + s) = C int_0^inf exp(-t (C + s)) dt, integrated numerically."""
    m2 = float(sum(v * v for v in mean))

    def laplace(t):
        return (1 + 2 * t * var) ** (-D / 2) * math.exp(-t * m2 / (1 + 2 * t * var))

    if kernel == "rbf":
        return laplace(1 / C)
    return C * quad(lambda t: math.exp(-C * t) * laplace(t), 0, math.inf)[0]


def _closed_form(kernel, mu_p, s_p, mu_q, s_q):
    """MMD^2 between N(mu_p, s_p^2 I) and N(mu_q, s_q^2 I)."""
    diff = [a - b for a, b in zip(mu_p, mu_q)]
    return (_mean_kernel(kernel, [0.0] * D, 2 * s_p**2) + _mean_kernel(kernel, [0.0] * D,
            2 * s_q**2) - 2 * _mean_kernel(kernel, diff, s_p**2 + s_q**2))


def _v_statistic(x, y, kernel, bandwidth):
    """The biased estimate: every pair, each point with itself included."""
    return (kernel_matrix(x, x, kernel, bandwidth).mean() + kernel_matrix(y, y, kernel, bandwidth)
            .mean() - 2 * kernel_matrix(x, y, kernel, bandwidth).mean())


def _estimates(kernel, mu_p, s_p, mu_q, s_q, n=4, reps=40000, statistic=mmd2):
    """``statistic`` on ``reps`` independent pairs of samples of n points each."""
    g = torch.Generator().manual_seed(0)
    x = torch.tensor(mu_p) + s_p * torch.randn(reps, n, D, dtype=torch.float64, generator=g)
    y = torch.tensor(mu_q) + s_q * torch.randn(reps, n, D, dtype=torch.float64, generator=g)
    return torch.vmap(lambda a, b: statistic(a, b, kernel, C))(x, y)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("q", [((1.0, -0.5), 1.5), ((0.0, 0.0), 1.0)], ids=["apart", "equal"])
def test_the_unbiased_estimate_averages_to_the_closed_form(kernel, q):
    """Over many minibatches of only four points, the mean estimate is MMD^2 within its
    standard error (0 for equal distributions, which it then undershoots half the time); the
    biased V-statistic (diagonal included) is far off at this size."""
    torch.manual_seed(0)
    p = ((0.0, 0.0), 1.0)
    exact = _closed_form(kernel, *p, *q)
    estimates = _estimates(kernel, *p, *q)
    error = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - exact) < 4 * error, (estimates.mean(), exact)
    if q == p:
        assert exact == 0.0 and (estimates < 0).float().mean() > 0.2
    else:
        assert exact > 50 * error  # a difference the test can see
    biased = _estimates(kernel, *p, *q, statistic=_v_statistic)
    assert abs(biased.mean().item() - exact) > 10 * error


def test_the_kernels_and_the_bandwidth():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    assert_close(kernel_matrix(x, y, "rbf", 5.0), torch.tensor([[math.exp(-1.0)]]))
    assert_close(kernel_matrix(x, y, "imq", 5.0), torch.tensor([[0.5]]))
    assert default_bandwidth(8) == 16.0  # the WAE paper's 2 d sigma_z^2 for MNIST


def _seeded(objective, model, x, seed=3):
    torch.manual_seed(seed)
    return objective.loss(model, x)


def test_info_vae_weights_the_kl_and_the_mmd_and_logs_the_true_elbo():
    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(32)
    torch.manual_seed(3)
    z, _, _, bound = sample_bound(model, x)
    mmd = mmd2(z, model.prior.sample(len(z)), "imq", 7.0)
    objective = InfoVAE(alpha=0.25, lam=3.0, kernel="imq", bandwidth=7.0)
    loss, logged = _seeded(objective, model, x)
    assert_close(loss, -(bound.recon - 0.75 * bound.kl).mean() + 2.25 * mmd)
    assert_close(logged.elbo, bound.elbo)  # the true ELBO, whatever alpha and lambda
    assert_close(objective.logged()["mmd"], mmd.detach())
    # alpha = 0, lambda = 1: the ELBO itself (estimator B, the same sample)
    torch.manual_seed(3)
    elbo = ELBO().bound(model, x)
    assert_close(_seeded(InfoVAE(alpha=0.0, lam=1.0), model, x)[0], -elbo.elbo.mean())
    with pytest.raises(ArgumentError, match="lam"):
        InfoVAE(alpha=-1.0, lam=1.0)  # a negative weight on the MMD


@pytest.mark.parametrize("deterministic", [True, False])
def test_wae_is_the_cost_plus_lambda_mmd_of_the_codes(deterministic):
    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(32)
    torch.manual_seed(3)
    z, q, _, bound = sample_bound(model, x)
    if deterministic:  # the encoder's location as the code
        z = q.mean
    cost = -model.decoder(z).log_prob(x)
    mmd = mmd2(z, model.prior.sample(len(z)), "imq", default_bandwidth(3))
    objective = WAE(lam=10.0, deterministic=deterministic)
    loss, logged = _seeded(objective, model, x)
    assert_close(loss, cost.mean() + 10.0 * mmd)
    assert_close(logged.elbo, bound.elbo)
    assert set(objective.logged()) == {"mmd", "cost"}


@pytest.mark.parametrize("objective", [InfoVAE(), InfoVAE(alpha=0.0, lam=10.0, kernel="imq"),
                                       WAE(), WAE(kernel="rbf", deterministic=False)],
                         ids=repr)
def test_it_trains(objective):
    """The loss falls; the ELBO rises, except under WAE's deterministic encoder, whose q(z|x)
    has a scale that nothing trains."""
    result = fit(objective)
    assert result.loss_after < result.loss_before - 0.1, result
    if not getattr(objective, "deterministic", False):
        assert result.elbo_after > result.elbo_before + 0.1, result


@pytest.mark.parametrize("objective", [InfoVAE(), InfoVAE(alpha=0.0, lam=1.0), WAE()])
def test_a_minibatch_of_one_point_is_refused_naming_the_batch_size(objective):
    """One point has no pairs: the U-statistic divided 0 by 0, and training stopped with a
    NaN loss and the advice to lower the learning rate (Frey Face's 1565 training points in
    minibatches of 782 leave one at each epoch's end), even where the MMD's weight is 0
    (alpha = 0, lambda = 1: 0 x NaN). The refusal names the minibatch and what to choose
    (a last resort: the settings that make one are refused before training, below)."""
    from vae_lightning.errors import ConfigError

    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(8)
    with pytest.raises(ConfigError, match=r"this training minibatch holds 1: choose a "
                       r"data.batch_size of at least 2"):
        objective.loss(model, x[:1])
    loss, _ = objective.loss(model, x[:2])  # two points: one pair, a finite estimate
    assert torch.isfinite(loss)


@pytest.mark.parametrize("objective, batch_size, why, fits", [
    ("info_vae", 782, "the training split's 1565 points leave 1 after the last full minibatch "
     "of data.batch_size=782", 783),
    ("wae", 1, "data.batch_size=1 holds fewer", 3),
])
def test_a_batch_size_that_makes_a_one_point_minibatch_is_refused_before_training(
        tmp_path, objective, batch_size, why, fits):
    """Objective.min_batch (2 for the MMD's pairs) is checked against the batch size and the
    training split's size before the first step (run_checks.check_minibatches): the refusal
    names both and a batch size that fits; nothing is trained or written."""
    from compose import compose_train

    from vae_lightning.errors import ConfigError
    from vae_lightning.train import train

    cfg = compose_train(["data=frey", "model.latent=2", f"model/objective={objective}",
                         f"data.batch_size={batch_size}", "logger=none",
                         "trainer.enable_progress_bar=false"], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(why) + r".* e\.g\. data\.batch_size="
                       + str(fits) + r"\.$"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
    assert 1565 % fits == 0 or 1565 % fits >= 2


def test_a_training_split_of_one_point_is_refused_without_a_batch_size_that_cannot_fit(
        tmp_path):
    """A training split of one point (data=array, 3 images, one held out for val and test
    each) was refused with "choose a data.batch_size of at least 2 ... e.g.
    data.batch_size=1": no batch size fits; the data do not."""
    import numpy as np
    from compose import compose_train

    from vae_lightning.errors import ConfigError
    from vae_lightning.train import train

    np.save(tmp_path / "three.npy", np.zeros((3, 4, 4), np.uint8))
    cfg = compose_train(["data=array", f"data.path={tmp_path / 'three.npy'}", "model.latent=2",
                         "model/objective=wae", "logger=none",
                         "trainer.enable_progress_bar=false"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"WAE .* needs at least 2 points in each training "
                       r"minibatch .* but the training split holds 1: add data, or hold fewer "
                       r"out \(data.val_size, data.test_size\)\.$"):
        train(cfg)


def test_under_ddp_each_rank_s_share_is_checked_for_a_one_point_minibatch(tmp_path):
    """Two DDP ranks share Frey Face's 1565 training faces, 782 each: data.batch_size=781
    leaves 3 after one process's last full minibatch (accepted) but 1 on each rank (the MMD
    of one point has no value: a NaN at each epoch's end); refused naming the ranks' shares."""
    from compose import compose_train

    from vae_lightning.errors import ConfigError
    from vae_lightning.run_checks import check_minibatches
    from vae_lightning.train import build_run

    datamodule, model, *_ = build_run(compose_train(
        ["data=frey", "model.latent=2", "model/objective=info_vae", "data.batch_size=781"],
        tmp_path))
    datamodule.setup("fit")
    check_minibatches(model, datamodule)  # one process: 1565 % 781 = 3
    with pytest.raises(ConfigError, match=r"each of the 2 ranks' shares of the training split's "
                       r"782 points leave 1 after the last full minibatch of data.batch_size=781"
                       r": .* e\.g\. data\.batch_size=782\.$"):
        check_minibatches(model, datamodule, world=2)
