"""KL schedules (``model/objective/kl_schedule``): linear warm-up and cyclical annealing (Fu et
al. 2019) against the paper's formula, the same schedule object weighting the KL term of every
objective that has one (through the config), and free bits per latent dimension or group."""

from types import SimpleNamespace

import pytest
import torch
from compose import compose_train
from models import binary_images, small_vae
from torch.testing import assert_close

from vae_lightning.args import ArgumentError
from vae_lightning.errors import ConfigError
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.free_bits import FreeBits
from vae_lightning.objectives.kl_schedule import Cyclical, Linear
from vae_lightning.train import build_run

# The options with a KL term, and what makes that term non-zero where the default has none.
WITH_KL = {"elbo": [], "free_bits": [], "beta_tc": [], "dip_vae_i": [], "dip_vae_ii": [],
           "factor_vae": ["model.objective.hidden=[16]"], "info_vae": ["model.objective.alpha=0.5"]}


def test_linear_warm_up():
    schedule = Linear(steps=4)
    assert [schedule(t) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def _fu_et_al(t, total, cycles, ratio):
    """Fu et al. 2019, eq. 9, at the paper's iteration t (from 1): tau = mod(t - 1,
    ceil(T / M)) / (T / M); beta = tau / R while tau <= R, else 1."""
    tau = ((t - 1) % -(-total // cycles)) / (total / cycles)
    return tau / ratio if tau <= ratio else 1.0


@pytest.mark.parametrize("total, cycles, ratio", [(100, 4, 0.5), (10, 3, 0.5), (50, 1, 1.0),
                                                  (40, 4, 0.25)])
def test_cyclical_annealing_follows_the_paper(total, cycles, ratio):
    schedule = Cyclical(total_steps=total, cycles=cycles, ratio=ratio)
    for step in range(2 * total):  # past T the cycles go on
        assert schedule(step) == pytest.approx(_fu_et_al(step + 1, total, cycles, ratio)), step
    values = [Cyclical(100)(t) for t in (0, 6, 12, 13, 24, 25, 50, 99)]
    assert values == pytest.approx([0.0, 0.48, 0.96, 1.0, 1.0, 0.0, 0.0, 1.0])


def test_a_cycle_shorter_than_a_step_is_refused():
    with pytest.raises(ArgumentError, match="cycles"):
        Cyclical(total_steps=3, cycles=4)


def test_warmup_steps_is_the_linear_schedule_and_not_both():
    torch.manual_seed(0)
    model, x = small_vae(), binary_images(16)
    a, b = ELBO(warmup_steps=10), ELBO(kl_schedule=Linear(10))
    assert [a.kl_weight(t) for t in range(12)] == [b.kl_weight(t) for t in range(12)]
    torch.manual_seed(1)
    loss_a = a.loss(model, x)[0]
    torch.manual_seed(1)
    assert_close(loss_a, b.loss(model, x)[0])
    with pytest.raises(ArgumentError, match="kl_schedule"):
        ELBO(warmup_steps=10, kl_schedule=Linear(10))


def _at(objective, model, x, step):
    model._trainer = SimpleNamespace(global_step=step)
    torch.manual_seed(2)
    return objective.loss(model, x)


@pytest.mark.parametrize("option", sorted(WITH_KL))
def test_every_objective_with_a_kl_term_takes_the_schedule(option, tmp_path):
    """Composed from the group: the schedule is the objective's, the loss is affine in its
    weight w_t (so at w = 1/2 it is the mean of the losses at w = 0 and w = 1) and the true
    ELBO is logged whatever w_t."""
    cfg = compose_train([f"model/objective={option}", "model/objective/kl_schedule=linear",
                         "model.objective.kl_schedule.steps=10", "model.latent=3", "logger=none",
                         *WITH_KL[option]], tmp_path)
    model = build_run(cfg).model
    objective = model.objective
    assert isinstance(objective.kl_schedule, Linear) and objective.step_dependent
    x = torch.rand(16, *model.data_shape)
    (start, bound_0), (middle, _), (end, bound_1) = (_at(objective, model, x, t)
                                                     for t in (0, 5, 10))
    assert (end - start).abs() > 1e-3
    assert_close(middle, (start + end) / 2)
    assert_close(bound_0.elbo, bound_1.elbo)
    cyclical = compose_train([f"model/objective={option}", "model/objective/kl_schedule=cyclical",
                              "model.objective.kl_schedule.total_steps=100", "logger=none",
                              *WITH_KL[option]], tmp_path)
    assert isinstance(build_run(cyclical).model.objective.kl_schedule, Cyclical)


def test_the_cyclical_schedule_needs_the_training_length(tmp_path):
    cfg = compose_train(["model/objective/kl_schedule=cyclical", "logger=none"], tmp_path)
    with pytest.raises(ConfigError, match="model.objective.kl_schedule.total_steps is required"):
        build_run(cfg)


def test_warmup_steps_and_a_schedule_together_are_one_config_error(tmp_path):
    cfg = compose_train(["model/objective/kl_schedule=linear", "model.objective.warmup_steps=5",
                         "logger=none"], tmp_path)
    with pytest.raises(ConfigError, match="model.objective.kl_schedule"):
        build_run(cfg)


def test_free_bits_floors_each_group_s_kl():
    """Groups of 3 and 2 of 5 dimensions: sum_k max(lambda, E_M[sum_{j in k} KL_j])."""
    torch.manual_seed(0)
    model, x = small_vae(latent=5), binary_images(32)
    torch.manual_seed(1)
    recon, kl = FreeBits().terms(model, x)
    recon, kl = recon.detach(), kl.detach()
    per_group = torch.stack([kl[:, :3].sum(1).mean(), kl[:, 3:].sum(1).mean()])
    threshold = float(per_group.min() + per_group.max()) / 2  # one group under, one over
    objective = FreeBits(threshold=threshold, groups=2)
    torch.manual_seed(1)
    loss, bound = objective.loss(model, x)
    assert_close(loss, per_group.clamp(min=threshold).sum() - recon.mean())
    assert_close(bound.kl, kl.sum(-1))  # the true KL is logged, without the floor
    torch.manual_seed(1)
    per_dimension = FreeBits(threshold=threshold).loss(model, x)[0]
    torch.manual_seed(1)
    assert_close(FreeBits(threshold=threshold, groups=5).loss(model, x)[0], per_dimension)
    with pytest.raises(ValueError, match="groups=6"):
        small_vae(latent=5, objective=FreeBits(groups=6))


def test_free_bits_scales_the_floored_kl_by_the_schedule():
    torch.manual_seed(0)
    model, x = small_vae(latent=3), binary_images(16)
    objective = FreeBits(threshold=0.1, kl_schedule=Linear(4))
    torch.manual_seed(2)  # the random state of _at
    recon, kl = objective.terms(model, x)
    loss, _ = _at(objective, model, x, 1)
    assert_close(loss, 0.25 * kl.mean(0).clamp(min=0.1).sum() - recon.mean())
