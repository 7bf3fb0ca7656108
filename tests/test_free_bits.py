"""Free bits (Kingma et al. 2016): each latent dimension's minibatch KL counts at least lambda
nats in the loss; the logged bound is the true ELBO. Added as its module, YAML and these tests."""

import pytest
import torch
from compose import compose_train
from models import binary_images, small_vae

from vae_lightning.errors import ConfigError
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.free_bits import FreeBits
from vae_lightning.posteriors import StudentT
from vae_lightning.priors import MixtureOfGaussians
from vae_lightning.train import build_run, train


def test_the_bound_is_the_elbo_and_the_loss_floors_each_dimension():
    torch.manual_seed(0)
    model = small_vae(latent=3)
    x = binary_images(32)
    torch.manual_seed(1)
    bound = ELBO(kl="analytic").bound(model, x)
    torch.manual_seed(1)
    recon, kl = FreeBits(threshold=0.5).terms(model, x)
    torch.testing.assert_close(recon, bound.recon)
    torch.testing.assert_close(kl.sum(-1), bound.kl)  # the per-dimension KLs add up
    for threshold in (0.0, 0.5, 100.0):
        torch.manual_seed(1)
        loss, logged = FreeBits(threshold=threshold).loss(model, x)
        expected = torch.maximum(kl.mean(0), torch.tensor(threshold)).sum() - recon.mean()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(logged.elbo, bound.elbo)  # logged: the true ELBO
    torch.manual_seed(1)
    assert FreeBits(threshold=0.0).loss(model, x)[0].item() == pytest.approx(
        -bound.elbo.mean().item(), rel=1e-6)  # lambda = 0: the ELBO


def test_a_dimension_under_the_floor_gets_no_kl_gradient():
    """Below lambda the KL term is the constant lambda: the encoder is not pushed to shrink that
    dimension's KL further, only the reconstruction moves it."""
    torch.manual_seed(0)
    model = small_vae(latent=2)
    x = binary_images(16)
    _, kl = FreeBits().terms(model, x)
    objective = FreeBits(threshold=float(kl.mean(0).max()) + 1.0)  # every dimension below
    model.zero_grad()
    torch.manual_seed(2)
    objective.loss(model, x)[0].backward()
    with_floor = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    torch.manual_seed(2)
    recon, _ = objective.terms(model, x)
    (-recon.mean()).backward()
    for a, b in zip(with_floor, (p.grad for p in model.encoder.parameters())):
        torch.testing.assert_close(a, b)


def test_the_monte_carlo_per_dimension_kl_estimates_the_analytic_one():
    torch.manual_seed(0)
    model = small_vae(latent=3, objective=FreeBits(n_samples=20000, kl="mc"))
    x = binary_images(4)
    _, mc = model.objective.terms(model, x)
    _, analytic = FreeBits(kl="analytic").terms(model, x)
    torch.testing.assert_close(mc, analytic, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("parts, words", [
    ({"prior": MixtureOfGaussians}, ["MixtureOfGaussians", "factorized"]),
])
def test_parts_that_do_not_factorize_are_refused_when_composed(parts, words):
    with pytest.raises(ValueError) as err:
        small_vae(objective=FreeBits(), **parts)
    for word in words:
        assert word in str(err.value)


def test_student_t_trains_with_monte_carlo_per_dimension_kl():
    model = small_vae(posterior=StudentT(df=5.0), objective=FreeBits())
    loss, bound = model.objective.loss(model, binary_images(8))
    assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all()
    with pytest.raises(ValueError, match="kl='analytic' needs KL"):
        small_vae(posterior=StudentT(df=5.0), objective=FreeBits(kl="analytic"))


def test_free_bits_trains_from_the_config_group(tmp_path):
    cfg = compose_train(["model/objective=free_bits", "model.objective.threshold=0.1",
                         "model.latent=2", "trainer.max_epochs=2", "logger=none",
                         "callbacks.figures.n_points=0", "trainer.enable_progress_bar=false"],
                        tmp_path)
    assert isinstance(build_run(cfg).model.objective, FreeBits)
    results = train(cfg)
    assert results["objective"] == "free_bits" and results["status"] == "completed"
    assert results["test/elbo"] > results["initial/val_elbo"]


def test_a_pair_that_cannot_work_is_one_config_error(tmp_path):
    cfg = compose_train(["model/objective=free_bits", "model/prior=mog", "logger=none"],
                        tmp_path)
    with pytest.raises(ConfigError, match="factorized"):
        build_run(cfg)
