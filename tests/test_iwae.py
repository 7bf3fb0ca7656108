"""The importance-weighted bound (k = 1 is estimator A; it tightens with k on a trained model),
and the training weight beta_t on the KL, which changes the loss but never the logged ELBO."""

from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from vae_lightning.data import FreyFaceDataModule
from vae_lightning.likelihoods import Gaussian
from vae_lightning.module import VAE
from vae_lightning.objectives import draw, elbo, iwae


def _vae(seed=0, input_dim=12, latent=2, hidden=(16,), **kwargs):
    torch.manual_seed(seed)
    return VAE(input_dim, latent, hidden, hidden, **kwargs)


def _binary_data(n=256, dim=12, seed=0):
    """Binary data from two latent factors, so a 2-d VAE can fit it."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    logits = 3.0 * z @ torch.randn(2, dim, generator=g)
    return torch.bernoulli(torch.sigmoid(logits), generator=g)


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
        values.append(iwae(draw(x, vae.encoder(x), vae.decoder, vae.prior, k).log_w).mean())
    return torch.stack(values).mean().item()


def test_iwae_with_k1_is_estimator_a_on_the_same_sample():
    vae, x = _vae(), _binary_data(32)
    q = vae.encoder(x)
    torch.manual_seed(3)
    k1 = iwae(draw(x, q, vae.decoder, vae.prior, 1).log_w)
    torch.manual_seed(3)
    a = elbo(x, q, vae.decoder, vae.prior, n_samples=1, analytic_kl=False).elbo
    assert_close(k1, a, rtol=1e-6, atol=1e-5)


def test_iwae_tightens_with_k_on_a_briefly_trained_model():
    x = _binary_data()
    vae = _train(_vae(), x, steps=200)
    b1, b10, b100 = (_mean_iwae(vae, x, k) for k in (1, 10, 100))
    assert b1 < b10 < b100, (b1, b10, b100)


def test_iwae_tightens_with_k_on_frey_face(tmp_path):
    dm = FreyFaceDataModule(root=tmp_path, batch_size=100)
    dm.setup("fit")
    x = torch.cat([dm.on_after_batch_transfer(b, 0)[0] for b in dm.train_dataloader()])
    vae = _train(_vae(input_dim=560, latent=5, hidden=(200,), likelihood=Gaussian()), x, 300, 100)
    b1, b10, b100 = (_mean_iwae(vae, x[:200], k) for k in (1, 10, 100))
    assert b1 < b10 < b100, (b1, b10, b100)


def _training_loss_and_elbo(vae, x, step):
    """The training loss at ``step`` (a stub trainer holds the step) and the logged ELBO."""
    vae._trainer = SimpleNamespace(global_step=step)
    torch.manual_seed(5)
    loss, logged = vae.training_loss(x)
    torch.manual_seed(5)
    assert torch.equal(logged.elbo, vae.bound(x).elbo)
    return loss, logged.elbo


@pytest.mark.parametrize("kwargs, weight", [
    ({"beta": 0.5}, 0.5),
    ({"kl_warmup_steps": 10}, 0.3),  # at step 3 of 10
    ({"beta": 2.0, "kl_warmup_steps": 4}, 1.5),
])
def test_beta_and_warmup_change_the_loss_but_not_the_logged_elbo(kwargs, weight):
    x = _binary_data(32)
    base, other = _vae(), _vae(**kwargs)
    other.load_state_dict(base.state_dict())
    loss_1, elbo_1 = _training_loss_and_elbo(base, x, step=3)
    loss_w, elbo_w = _training_loss_and_elbo(other, x, step=3)
    assert other.kl_weight() == pytest.approx(weight)
    assert torch.equal(elbo_1, elbo_w)
    torch.manual_seed(5)
    kl = base.bound(x).kl.mean()
    assert_close(loss_w - loss_1, (weight - 1.0) * kl)  # loss = -recon + beta_t * kl
    assert not torch.isclose(loss_w, loss_1)
