"""The Ladder VAE's top-down inference (model=ladder): the precision-weighted merge is the
normalised product of two Gaussians; on a two-layer linear-Gaussian model the ladder can hold the
exact posterior (the bottom-up term of z_1 is the likelihood's, the top-down term the prior's),
and then every importance weight is the closed-form p(x); it refuses a prior without its top-down
networks; DReG holds the prior's weights fixed inside q; it trains."""

import csv
import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from compose import SHARED_DATA, compose_train
from linear_gaussian import LINEAR, S1, SIGMA, A, B, a, b, data, log_px, set_affine
from models import binary_images, fit, small_vae
from torch.distributions import Independent, Normal

from vae_lightning.likelihoods import Decoder, GaussianFixed
from vae_lightning.nets import MLP
from vae_lightning.objectives.base import draw
from vae_lightning.objectives.dreg import DReG
from vae_lightning.posteriors import Encoder
from vae_lightning.posteriors.ladder import Ladder, precision_weighted
from vae_lightning.priors import StandardNormal
from vae_lightning.priors.hierarchy import TopDown

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _gaussian(loc, scale):
    return Independent(Normal(loc, scale), 1)


def test_the_merge_is_the_normalised_product_of_the_two_gaussians():
    torch.manual_seed(0)
    q = _gaussian(torch.randn(4, 3), torch.rand(4, 3) + 0.2)
    p = _gaussian(torch.randn(4, 3), torch.rand(4, 3) + 0.2)
    merged = precision_weighted(q, p)
    z = torch.randn(5, 4, 3)
    # q(z) p(z) / Z with Z = int q p = N(mu_q; mu_p, sigma_q^2 + sigma_p^2), per dimension.
    log_z = _gaussian(p.base_dist.loc, (q.base_dist.scale**2 + p.base_dist.scale**2).sqrt()
                      ).log_prob(q.base_dist.loc)
    torch.testing.assert_close(merged.log_prob(z), q.log_prob(z) + p.log_prob(z) - log_z)


def _ladder_model() -> SimpleNamespace:
    """The linear-Gaussian model of tests/test_hierarchy.py with the ladder's q set to its exact
    posterior: q(z_2|x) = p(z_2|x), and q(z_1|z_2, x) = p(z_1|z_2) x N(z_1; B^-1 (x - b),
    sigma^2 B^-2), the product of the prior's top-down term and the likelihood's."""
    torch.manual_seed(0)
    shape = (1, 1, 3)
    prior = TopDown(5, [3, 2], LINEAR)
    encoder = Encoder(LINEAR, Ladder([3, 2]), shape, latent=5)
    encoder.posterior.bind(prior)
    decoder = Decoder(LINEAR, GaussianFixed(SIGMA, mean_activation="identity"), shape, latent=3)
    set_affine(prior.nets[0], torch.cat([A, torch.zeros(3, 2)]),
         torch.cat([a, torch.full((3,), math.log(S1**2))]))
    set_affine(decoder.net, B, b)
    inv_b = torch.diag(1 / torch.diag(B))
    # p(z_2|x): x = B A z_2 + (B a + b) + noise of covariance S = s1^2 B B^T + sigma^2 I.
    S_inv = torch.linalg.inv(S1**2 * B @ B.T + SIGMA**2 * torch.eye(3))
    BA = B @ A
    var_2 = 1 / torch.diag(torch.eye(2) + BA.T @ S_inv @ BA)  # diagonal: A's columns disjoint
    W_2 = var_2[:, None] * (BA.T @ S_inv)
    set_affine(encoder.net, torch.cat([inv_b, torch.zeros(3, 3), W_2, torch.zeros(2, 3)]),
         torch.cat([-inv_b @ b, torch.log(SIGMA**2 / torch.diag(B) ** 2),
                    -W_2 @ (B @ a + b), torch.log(var_2)]))
    return SimpleNamespace(encoder=encoder, decoder=decoder, prior=prior)


def test_with_the_exact_posterior_every_importance_weight_is_p_of_x():
    model, x = _ladder_model(), data()
    samples = draw(model, x, model.encoder(x), model.prior.distribution(), 50)
    torch.testing.assert_close(samples.log_w, log_px(x).expand(50, -1), atol=2e-4, rtol=0)


def test_a_prior_without_the_top_down_networks_is_refused_in_one_line():
    with pytest.raises(ValueError, match="needs model/prior=hierarchy over the same layers"):
        Ladder([3, 2]).bind(StandardNormal(5))
    with pytest.raises(ValueError, match="same layers"):
        Ladder([3, 2]).bind(TopDown(5, [4, 1], LINEAR))
    with pytest.raises(ValueError, match="needs model/prior=hierarchy"):
        small_vae(latent=5, posterior=Ladder([3, 2]))


def test_dreg_holds_the_prior_weights_fixed_inside_q():
    model, x = _ladder_model(), data()
    fixed_q = model.encoder.posterior(model.encoder.params(x).detach())
    z = model.encoder(x).rsample().detach().requires_grad_()
    weights = [*model.encoder.parameters(), *model.prior.parameters()]
    grads = torch.autograd.grad(fixed_q.log_prob(z).sum(), [z, *weights], allow_unused=True)
    assert grads[0].abs().sum() > 0 and all(g is None for g in grads[1:])
    torch.manual_seed(0)
    net = partial(MLP, hidden=(4,))
    vae = small_vae(latent=3, posterior=Ladder([2, 1]), prior=TopDown(3, [2, 1], net),
                    objective=DReG(k=3))
    loss, _ = vae.objective.loss(vae, binary_images(8))
    loss.backward()
    assert vae.prior.nets[0][0].weight.grad.abs().sum() > 0  # as p, through log p(z)


def test_it_trains():
    torch.manual_seed(0)
    net = partial(MLP, hidden=(8,))
    model = small_vae(latent=6, posterior=Ladder([3, 2, 1]), prior=TopDown(6, [3, 2, 1], net))
    losses = fit(model, binary_images(256), steps=150)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.2


@pytest.mark.slow  # the quick suite trains the two-layer preset on MNIST (test_hierarchy.py)
@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(),
                    reason="needs ../shared/data/mnist (the shared data folder)")
def test_the_lvae_preset_trains_on_mnist(tmp_path, monkeypatch):
    from vae_lightning.train import train

    monkeypatch.setenv("VAE_DATA_DIR", str(SHARED_DATA))
    cfg = compose_train(["experiment=lvae_mnist", "trainer.max_epochs=1",
                         "+trainer.limit_train_batches=60", "+trainer.limit_test_batches=2",
                         "trainer.enable_progress_bar=false", "callbacks.figures=null",
                         "logger=csv"], output_dir=tmp_path)
    assert cfg.model.latent == 124 and cfg.model.decoder.latent == 64
    train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert losses[-1] < losses[0] - 20  # nats per image, 60 steps into the KL warm-up


def test_wake_sleep_is_refused_for_a_q_built_with_the_prior_s_networks():
    """The sleep phase must train the recognition model alone; the ladder's q uses p's
    networks. The bottom-up hierarchy, whose q has networks of its own, is accepted."""
    from vae_lightning.objectives.wake_sleep import WakeSleep
    from vae_lightning.posteriors.hierarchy import BottomUp

    net = partial(MLP, hidden=(4,))
    with pytest.raises(ValueError, match="sleep phase"):
        small_vae(latent=3, posterior=Ladder([2, 1]), prior=TopDown(3, [2, 1], net),
                  objective=WakeSleep())
    model = small_vae(latent=3, posterior=BottomUp([2, 1], net), prior=TopDown(3, [2, 1], net),
                      objective=WakeSleep())
    wake, _ = model.objective.wake_loss(model, binary_images(8))
    wake.backward()  # the wake phase reaches the generative model only, every layer of q fixed
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.prior.parameters())
