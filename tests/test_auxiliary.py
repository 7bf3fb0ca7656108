"""An objective with parameters and an optimizer of its own (``Objective.auxiliary``): the model's
optimizer never touches them, their optimizer steps after each model step without counting as a
model step, both optimizers' states go into checkpoints and resume exactly, with one or several
steps per batch; the graphed step refuses them."""

import pytest
import torch
from compose import compose_train
from models import small_vae
from torch import nn

from vae_lightning.objectives import Auxiliary
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.train import train


class WithCritic(ELBO, nn.Module):
    """The ELBO, and a critic (a linear map of z) fitted after each step to predict the sum of
    the step's posterior means, by its own SGD: a stand-in for FactorVAE's discriminator."""

    def __init__(self, lr: float = 0.01) -> None:
        ELBO.__init__(self)
        nn.Module.__init__(self)
        self.critic = nn.Linear(2, 1)
        self.lr, self.updates = lr, 0

    def critic_loss(self, model, x):
        self.updates += 1
        with torch.no_grad():
            z = model.encoder(x).mean
        return (self.critic(z).squeeze(-1) - z.sum(-1)).pow(2).mean()

    def auxiliary(self):
        return [Auxiliary(self.critic.parameters,
                          lambda params: torch.optim.SGD(params, lr=self.lr),
                          self.critic_loss)]

    def __repr__(self) -> str:
        return "WithCritic()"


def test_the_model_optimizer_skips_the_objective_s_parameters():
    model = small_vae(objective=WithCritic())
    optimizer, critic_optimizer = (entry["optimizer"] for entry in model.configure_optimizers())
    model_params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    critic_params = {id(p) for group in critic_optimizer.param_groups for p in group["params"]}
    assert critic_params == {id(p) for p in model.objective.critic.parameters()}
    assert not model_params & critic_params
    assert model_params | critic_params == {id(p) for p in model.parameters()}
    assert not model.automatic_optimization


def _train(tmp_path, monkeypatch, *overrides):
    torch.manual_seed(0)  # the critic's initial weights (a config-built one is built seeded)
    objective = WithCritic()
    monkeypatch.setattr("vae_lightning.objectives.elbo.ELBO", lambda **kw: objective)
    cfg = compose_train(["model.latent=2", "logger=none", "callbacks.figures=null",
                         "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
                         "trainer.limit_test_batches=1", *overrides], tmp_path)
    return train(cfg), objective


@pytest.mark.parametrize("steps_per_batch", [1, 4])
def test_the_critic_learns_and_the_step_count_is_the_model_s(steps_per_batch, tmp_path,
                                                             monkeypatch):
    """Trained through train.py on Frey Face: the critic took one update per model step and its
    loss fell, and global_step counts model steps only (so schedules and max_steps hold)."""
    results, objective = _train(tmp_path, monkeypatch, "trainer.max_steps=40",
                                f"data.steps_per_batch={steps_per_batch}")
    assert results["steps"] == 40 and objective.updates == 40
    assert results["status"] == "completed"
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(saved["optimizer_states"]) == 2
    assert {k for k in saved["state_dict"] if k.startswith("objective.")} == {
        "objective.critic.weight", "objective.critic.bias"}


def test_a_resume_restores_the_objective_s_parameters_and_optimizer(tmp_path, monkeypatch):
    """Two epochs then two more from last.ckpt give the critic and the model of four epochs in
    one run, to the bit (epochs of 5 minibatches: the check needs no more)."""
    short = ["trainer.limit_train_batches=5"]
    whole, _ = _train(tmp_path / "whole", monkeypatch, "trainer.max_epochs=4", *short)
    _train(tmp_path / "split", monkeypatch, "trainer.max_epochs=2", *short)
    _train(tmp_path / "split", monkeypatch, "trainer.max_epochs=4", *short,
           f"ckpt_path={tmp_path / 'split' / 'checkpoints' / 'last.ckpt'}")
    assert whole["steps"] == 20
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
            for run in ("whole", "split"))
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["optimizer_states"][1]["state"].keys() == b["optimizer_states"][1]["state"].keys()


def test_the_graphed_step_refuses_an_objective_with_its_own_updates():
    from vae_lightning.graphs import graph_problems

    model = small_vae(objective=WithCritic())
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    assert any("updates parameters of its own" in p for p in graph_problems(model, optimizer))
