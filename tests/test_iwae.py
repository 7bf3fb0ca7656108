"""The importance-weighted bound (k = 1 is estimator A; it tightens with k on a trained model),
and the training weight beta_t on the KL, which changes the loss but never the logged ELBO."""

from types import SimpleNamespace

import pytest
import torch
from models import SHAPE, binary_images, small_vae
from torch.testing import assert_close

from vae_lightning.data import FreyFaceDataModule
from vae_lightning.likelihoods import Gaussian
from vae_lightning.objectives import draw, elbo_estimate, iw_bound
from vae_lightning.objectives.elbo import ELBO


def _vae(seed=0, data_shape=SHAPE, latent=2, hidden=(16,), **kwargs):
    torch.manual_seed(seed)
    return small_vae(data_shape, latent, hidden, **kwargs)


def _train(vae, x, steps, batch=64):
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        xb = x[torch.randint(len(x), (batch,), generator=g)]
        loss = -vae.bound(xb).elbo.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vae


@torch.no_grad()
def _mean_iwae(vae, x, k, seeds=range(5)):
    values = []
    for seed in seeds:
        torch.manual_seed(seed)
        samples = draw(vae, x, vae.encoder(x), vae.prior.distribution(), k)
        values.append(iw_bound(samples.log_w).mean())
    return torch.stack(values).mean().item()


def test_iwae_with_k1_is_estimator_a_on_the_same_sample():
    vae, x = _vae(), binary_images(32)
    q = vae.encoder(x)
    torch.manual_seed(3)
    k1 = iw_bound(draw(vae, x, q, vae.prior.distribution(), 1).log_w)
    torch.manual_seed(3)
    a = elbo_estimate(vae, x, n_samples=1, kl="mc", q=q).elbo
    assert_close(k1, a, rtol=1e-6, atol=1e-5)


def test_iwae_tightens_with_k_on_a_briefly_trained_model():
    x = binary_images()
    vae = _train(_vae(), x, steps=200)
    b1, b10, b100 = (_mean_iwae(vae, x, k) for k in (1, 10, 100))
    assert b1 < b10 < b100, (b1, b10, b100)


@pytest.mark.slow  # trains on Frey Face; the briefly trained model above checks the same order
def test_iwae_tightens_with_k_on_frey_face(tmp_path):
    dm = FreyFaceDataModule(root=tmp_path, batch_size=100)
    dm.setup("fit")
    x = torch.cat([dm.to_inputs(b)[0] for b in dm.train_dataloader()])
    assert x.shape[1:] == dm.shape == (1, 28, 20)
    vae = _vae(data_shape=dm.shape, latent=5, hidden=(200,), likelihood=Gaussian())
    vae = _train(vae, x, 300, 100)
    b1, b10, b100 = (_mean_iwae(vae, x[:200], k) for k in (1, 10, 100))
    assert b1 < b10 < b100, (b1, b10, b100)


def _training_loss_and_elbo(vae, x, step):
    """The training loss at ``step`` (a stub trainer holds the step) and the logged ELBO."""
    vae._trainer = SimpleNamespace(global_step=step)
    assert vae.global_step == step
    torch.manual_seed(5)
    loss, logged = vae.objective.loss(vae, x)
    torch.manual_seed(5)
    assert torch.equal(logged.elbo, vae.bound(x).elbo)
    return loss, logged.elbo


@pytest.mark.parametrize("kwargs, weight", [
    ({"beta": 0.5}, 0.5),
    ({"warmup_steps": 10}, 0.3),  # at step 3 of 10
    ({"beta": 2.0, "warmup_steps": 4}, 1.5),
])
def test_beta_and_warmup_change_the_loss_but_not_the_logged_elbo(kwargs, weight):
    x = binary_images(32)
    base, other = _vae(), _vae(objective=ELBO(**kwargs))
    other.load_state_dict(base.state_dict())
    loss_1, elbo_1 = _training_loss_and_elbo(base, x, step=3)
    loss_w, elbo_w = _training_loss_and_elbo(other, x, step=3)
    assert other.objective.kl_weight(3) == pytest.approx(weight)
    assert torch.equal(elbo_1, elbo_w)
    torch.manual_seed(5)
    kl = base.bound(x).kl.mean()
    assert_close(loss_w - loss_1, (weight - 1.0) * kl)  # loss = -recon + beta_t * kl
    assert not torch.isclose(loss_w, loss_1)


@pytest.mark.parametrize("beta, warmup", [(1.0, 10), (2.0, 4), (0.5, 0)])
def test_kl_weight_ramps_linearly_from_zero_to_beta(beta, warmup):
    objective = ELBO(beta=beta, warmup_steps=warmup)
    for step in range(warmup + 3):
        want = beta * min(1.0, step / warmup) if warmup else beta
        assert objective.kl_weight(step) == pytest.approx(want)
    assert ELBO().kl_weight(0) == ELBO().kl_weight(1000) == 1.0


def test_a_model_without_a_trainer_is_at_step_zero_of_the_warmup():
    """At step 0 of a warm-up the KL weight is 0: the loss is the reconstruction term alone,
    loss - loss_1 = (0 - 1) * KL, and the logged ELBO is still recon - KL."""
    x = binary_images(32)
    base, other = _vae(), _vae(objective=ELBO(warmup_steps=10))
    other.load_state_dict(base.state_dict())
    assert other.global_step == 0 and other.objective.kl_weight(0) == 0.0
    torch.manual_seed(5)
    loss_1, bound_1 = base.objective.loss(base, x)
    torch.manual_seed(5)
    loss_0, bound_0 = other.objective.loss(other, x)
    assert torch.equal(bound_0.elbo, bound_1.elbo)
    assert_close(loss_0 - loss_1, -bound_1.kl.mean())
    assert_close(loss_0, -bound_0.recon.mean())
