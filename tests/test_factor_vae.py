"""FactorVAE (Kim & Mnih 2018): the discriminator's density-ratio estimate of the total
correlation against its closed form for correlated Gaussians, the loss, and the discriminator as
the objective's own parameters and optimizer (``Objective.auxiliary``), with no branch for it in
the model."""

import functools
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from compose import compose_train
from models import binary_images, small_vae
from objective_checks import fit
from torch.distributions import MultivariateNormal
from torch.testing import assert_close

from vae_lightning.errors import ConfigError
from vae_lightning.graphs import graph_problems
from vae_lightning.objectives.factor_vae import FactorVAE, permute_dims
from vae_lightning.objectives.regularized import sample_bound
from vae_lightning.train import build_run, train


def _gaussian_encoder(cov):
    """A stand-in for the model whose q(z|x) is N(0, cov) for every x: the aggregate posterior
    is that Gaussian, its total correlation 1/2 sum_j log cov_jj - 1/2 log det cov."""
    def encoder(x):
        return MultivariateNormal(torch.zeros(len(x), len(cov)), covariance_matrix=cov)
    return SimpleNamespace(encoder=encoder)


def _trained_estimate(cov, steps=400, batch=256):
    """The mean logit of a discriminator trained by the objective's own update (loss and
    optimizer) on the samples of N(0, cov) against permuted ones, at fresh samples."""
    torch.manual_seed(0)
    objective = FactorVAE(latent=len(cov), hidden=(64, 64),
                          optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    model, x = _gaussian_encoder(cov), torch.zeros(batch, 1)
    (update,) = objective.auxiliary()
    optimizer = update.optimizer(list(update.parameters()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small network: faster on one thread
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            update.loss(model, x).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        z = model.encoder(torch.zeros(20000, 1)).sample()
        return objective.discriminator(z).mean().item()


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.9])
def test_the_density_ratio_estimate_approaches_the_closed_form_tc(rho):
    cov = torch.tensor([[1.0, rho, rho / 2], [rho, 1.0, rho / 2], [rho / 2, rho / 2, 1.0]])
    exact = (0.5 * cov.diagonal().log().sum() - 0.5 * torch.logdet(cov)).item()
    estimate = _trained_estimate(cov)
    assert abs(estimate - exact) < 0.03 + 0.05 * exact, (estimate, exact)


def test_permuting_each_dimension_keeps_the_marginals_and_breaks_the_dependence():
    torch.manual_seed(0)
    z = torch.randn(4000, 1) @ torch.ones(1, 3) + 0.1 * torch.randn(4000, 3)  # nearly equal
    permuted = permute_dims(z)
    for j in range(3):
        assert torch.equal(permuted[:, j].sort().values, z[:, j].sort().values)
    assert torch.corrcoef(z.T)[0, 1] > 0.95 and torch.corrcoef(permuted.T)[0, 1].abs() < 0.05


def test_the_loss_is_the_elbo_less_gamma_times_the_discriminator_s_tc():
    torch.manual_seed(0)
    objective = FactorVAE(latent=3, gamma=7.0, hidden=(8,))
    model, x = small_vae(latent=3, objective=objective), binary_images(32)
    torch.manual_seed(3)
    z, _, _, bound = sample_bound(model, x)
    tc = objective.discriminator(z).squeeze(-1)
    torch.manual_seed(3)
    loss, logged = objective.loss(model, x)
    assert_close(loss, -(bound.elbo - 7.0 * tc).mean())
    assert_close(logged.elbo, bound.elbo)  # the true ELBO is logged
    assert_close(objective.logged()["tc"], tc.mean().detach())


def test_the_discriminator_is_the_objective_s_own_and_saved_with_the_model(tmp_path):
    cfg = compose_train(["model/objective=factor_vae", "model.latent=3",
                         "model.objective.hidden=[16]", "logger=none"], tmp_path)
    model = build_run(cfg).model
    assert isinstance(model.objective, FactorVAE) and model.objective.latent == 3
    optimizer, discriminator = (entry["optimizer"] for entry in model.configure_optimizers())
    own = {id(p) for p in model.objective.discriminator.parameters()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]}.isdisjoint(own)
    assert {id(p) for g in discriminator.param_groups for p in g["params"]} == own
    assert discriminator.defaults["lr"] == 1e-4 and discriminator.defaults["betas"] == (0.5, 0.9)
    assert any(k.startswith("objective.discriminator.") for k in model.state_dict())
    assert not model.automatic_optimization


def test_the_discriminator_s_update_leaves_the_vae_alone():
    torch.manual_seed(0)
    objective = FactorVAE(latent=2, hidden=(8,))
    model = small_vae(objective=objective)
    objective.auxiliary()[0].loss(model, binary_images(16)).backward()
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.decoder.parameters()])
    assert all(p.grad is not None for p in objective.discriminator.parameters())


def test_a_latent_size_other_than_the_model_s_and_the_graphed_step_are_refused():
    with pytest.raises(ValueError, match=r"model.objective.latent=3 .* \$\{..latent\}"):
        small_vae(latent=2, objective=FactorVAE(latent=3, hidden=(8,)))
    model = small_vae(objective=FactorVAE(latent=2, hidden=(8,)))
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    assert any("parameters of its own" in p for p in graph_problems(model, optimizer))


def test_it_trains():
    result = fit(FactorVAE(latent=2, gamma=5.0, hidden=(32, 32)))
    assert result.loss_after < result.loss_before - 0.1, result
    assert result.elbo_after > result.elbo_before + 0.1, result


def test_it_trains_with_several_steps_per_batch_and_a_kl_warm_up(tmp_path):
    """Through train.py on Frey Face: one discriminator update per model step, the steps
    counted as the model's (so the KL schedule's clock is the model's)."""
    cfg = compose_train(["model/objective=factor_vae", "model.objective.hidden=[16]",
                         "model/objective/kl_schedule=linear",
                         "model.objective.kl_schedule.steps=4",
                         "data.steps_per_batch=3", "trainer.max_steps=6", "model.latent=2",
                         "logger=none", "callbacks.figures.n_points=0",
                         "trainer.enable_progress_bar=false"], tmp_path)
    results = train(cfg)
    assert results["steps"] == 6 and results["status"] == "completed"
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    model_state, discriminator_state = saved["optimizer_states"]
    assert {float(s["step"]) for s in discriminator_state["state"].values()} == {6.0}
    assert {float(s["step"]) for s in model_state["state"].values()} == {6.0}


def test_the_graphed_step_is_refused_with_one_config_error(tmp_path):
    cfg = compose_train(["model/objective=factor_vae", "model.objective.hidden=[16]",
                         "model.cuda_graph=true", "model.optimizer.fused=true", "logger=none"],
                        tmp_path)
    with pytest.raises(ConfigError, match="cuda_graph=true cannot be used: .*of its own"):
        build_run(cfg)


def test_float16_mixed_precision_is_refused_with_its_own_updates():
    """The discriminator's optimizer steps outside Lightning's precision plugin: under 16-mixed
    its gradients carry the loss scale (2^16, doubled and halved by the scaler) and an overflow
    would be applied. Refused before training, naming the setting that works (bf16-mixed);
    float16 without an objective of its own, and bf16-mixed with one, are not refused here."""
    from vae_lightning.optimization import check_manual

    factor = SimpleNamespace(cuda_graph=False, auxiliary=[object()])
    for precision in ("16-mixed", "16", 16):
        with pytest.raises(ConfigError, match=f"trainer.precision={precision} cannot be used "
                           "with an objective with updates of its own.*bf16-mixed"):
            check_manual(factor, {"precision": precision})
    check_manual(factor, {"precision": "bf16-mixed"})
    check_manual(SimpleNamespace(cuda_graph=False, auxiliary=[]), {"precision": "16-mixed"})


class _SaveEachRank(L.Callback):
    """Each rank's weights at the end of training, to ``<out>.<rank>``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, module) -> None:
        torch.save({k: v.detach().clone() for k, v in module.state_dict().items()},
                   f"{self.out}.{trainer.global_rank}")


def test_it_trains_under_ddp_with_one_discriminator_on_every_rank(tmp_path):
    """Two CPU ranks (gloo): the discriminator's gradients are averaged over the ranks as the
    VAE's are, so every rank ends with the same weights, the discriminator's trained. Its
    update stopped each rank's second step with DDP's "parameters that were not used in
    producing the loss" (Lightning's manual_backward re-armed the reducer for the whole model),
    and was refused under DDP before; without the all-reduce the ranks' discriminators part."""
    run = build_run(compose_train(
        ["data=frey", "model.latent=2", "model.encoder.net.hidden=[16]",
         "model.decoder.net.hidden=[16]", "model/objective=factor_vae",
         "model.objective.hidden=[32]", "logger=none"], tmp_path))
    start = {k: v.clone() for k, v in run.model.objective.state_dict().items()}
    out = str(tmp_path / "weights")
    trainer = L.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=5,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[_SaveEachRank(out)])
    trainer.fit(run.model, run.datamodule)
    first, second = (torch.load(f"{out}.{rank}") for rank in (0, 1))
    assert [key for key in first if not torch.equal(first[key], second[key])] == []
    trained = [key for key, value in start.items()
               if not torch.equal(first[f"objective.{key}"], value)]
    assert trained == list(start), "every discriminator weight moves"
