"""The capacity-controlled beta-VAE (Burgess et al. 2018): gamma |KL - C| with C raised linearly
to C_max, the true ELBO logged, and that it trains the KL towards C."""

from types import SimpleNamespace

import pytest
import torch
from compose import compose_train
from models import binary_images, small_vae
from objective_checks import fit
from torch.testing import assert_close

from vae_lightning.objectives.capacity import Capacity
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.train import build_run


def test_the_capacity_rises_linearly_to_c_max():
    objective = Capacity(capacity=25.0, capacity_steps=100)
    assert [objective.capacity_at(t) for t in (0, 40, 100, 500)] == [0.0, 10.0, 25.0, 25.0]
    assert Capacity(capacity=3.0, capacity_steps=0).capacity_at(0) == 3.0
    assert objective.step_dependent and not Capacity(capacity_steps=0).step_dependent


@pytest.mark.parametrize("step", [0, 30, 1000])
def test_the_loss_is_gamma_times_the_distance_of_the_kl_to_c(step):
    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(32)
    model._trainer = SimpleNamespace(global_step=step)
    torch.manual_seed(1)
    elbo = ELBO().bound(model, x)
    objective = Capacity(gamma=100.0, capacity=5.0, capacity_steps=100)
    torch.manual_seed(1)
    loss, bound = objective.loss(model, x)
    target = 5.0 * min(1.0, step / 100)
    assert_close(loss, -elbo.recon.mean() + 100.0 * (elbo.kl.mean() - target).abs())
    assert_close(bound.elbo, elbo.elbo)  # the true ELBO
    assert objective.logged()["capacity"].item() == pytest.approx(target)


def test_it_trains_the_kl_towards_the_capacity():
    result = fit(Capacity(gamma=10.0, capacity=2.0, capacity_steps=0))
    assert result.loss_after < result.loss_before - 1.0, result
    assert result.elbo_after > result.elbo_before + 0.1, result


def test_the_option_carries_the_paper_s_setting(tmp_path):
    objective = build_run(compose_train(["model/objective=capacity", "logger=none"],
                                    tmp_path)).model.objective
    assert (objective.gamma, objective.capacity, objective.capacity_steps) == (1000.0, 25.0,
                                                                              100000)
