"""The default training step's numbers are torch.distributions' own: the composed default model
(``python train.py data=mnist``) gives, bit for bit, the loss, the bound and the gradients that
the plain composition of torch.distributions objects gives (Independent Normal posterior with
L = 1 sample dimension, torch's Normal-Normal KL to an N(0, I) built from tensors, Independent
Bernoulli likelihood), whatever shortcuts the hot path takes; and the default command's training
steps, through Lightning, the data module and the default callbacks, are those of a plain loop
of that reference loss and the configured optimizer."""

import copy
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import pytest
import torch
from compose import compose_train
from hydra.utils import instantiate
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence
from torch.nn import functional as F

from vae_lightning.config import instantiate_node
from vae_lightning.data.idx import write_idx
from vae_lightning.train import train

SHAPE = [1, 28, 28]


def _default_model(tmp_path, *overrides):
    cfg = compose_train(["data=mnist", *overrides], tmp_path)
    torch.manual_seed(0)
    return instantiate_node(cfg.model, "model", data_shape=SHAPE, steps_per_batch=1)


def _reference_loss(model, x):
    """-mean(E_q[log p(x|z)] - KL) composed of torch.distributions objects, op for op as they
    compute it: the reference the hot path must equal."""
    posterior = model.encoder.posterior
    loc, log_var = model.encoder.net(x).chunk(2, dim=-1)
    log_var = posterior.LOG_VAR_MIN + F.softplus(log_var - posterior.LOG_VAR_MIN)
    log_var = posterior.LOG_VAR_MAX - F.softplus(posterior.LOG_VAR_MAX - log_var)
    q = Independent(Normal(loc, torch.exp(0.5 * log_var)), 1)
    p = Independent(Normal(torch.zeros(model.latent), torch.ones(model.latent)), 1)
    kl = kl_divergence(q, p)
    z = q.rsample((1,))
    recon = Independent(Bernoulli(logits=model.decoder.net(z)), 3).log_prob(x).mean(0)
    return -(recon - 1.0 * kl).mean(), recon, kl


def _batch(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) < 0.3).float()


@pytest.mark.parametrize("overrides", [[], ["model.latent=2"]])
def test_the_default_loss_and_gradients_equal_torch_distributions_bit_for_bit(tmp_path,
                                                                              overrides):
    ours = _default_model(tmp_path, *overrides)
    reference = copy.deepcopy(ours)
    x = _batch()
    for step in range(3):  # three Adam steps: the trajectories stay equal
        torch.manual_seed(10 + step)
        loss, bound = ours.objective.loss(ours, x)
        torch.manual_seed(10 + step)
        ref_loss, ref_recon, ref_kl = _reference_loss(reference, x)
        assert torch.equal(loss, ref_loss), step
        assert torch.equal(bound.recon, ref_recon) and torch.equal(bound.kl, ref_kl), step
        for model, value in ((ours, loss), (reference, ref_loss)):
            model.zero_grad(set_to_none=True)
            value.backward()
        for (name, p), r in zip(ours.named_parameters(), reference.parameters(), strict=True):
            assert torch.equal(p.grad, r.grad), (step, name)
        for model in (ours, reference):
            with torch.no_grad():
                for p in model.parameters():
                    p -= 1e-3 * p.grad.sign()


def test_several_samples_keep_their_sample_dimension(tmp_path):
    """L > 1: the mean over the L draws, as torch.distributions computes it."""
    model = _default_model(tmp_path, "model.objective.n_samples=3")
    x = _batch(16)
    torch.manual_seed(3)
    bound = model.bound(x)
    torch.manual_seed(3)
    q = model.encoder(x)
    z = q.rsample((3,))
    expected = Independent(Bernoulli(logits=model.decoder.net(z)), 3).log_prob(x).mean(0)
    assert bound.recon.shape == (16,) and torch.equal(bound.recon, expected)


class Recorder(L.Callback):
    """Keeps what the run's training steps saw and gave: the model's state at the start, each
    step's inputs (after the data module's binarization), the global random state the step drew
    its noise from, its loss, and the state at the end."""

    runs: ClassVar[list["Recorder"]] = []

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.losses: list[torch.Tensor] = []
        self.end: dict[str, torch.Tensor] = {}
        Recorder.runs.append(self)

    @staticmethod
    def _state(module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in module.named_parameters()}

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self._state(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append((batch[0].clone(), torch.get_rng_state()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = self._state(pl_module)


def _fake_mnist(root: Path) -> None:
    g = np.random.default_rng(0)
    (root / "mnist").mkdir(parents=True)
    for prefix, n in (("train", 700), ("t10k", 100)):
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte",
                  g.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte",
                  g.integers(0, 10, n).astype(np.uint8))


def test_the_default_commands_steps_are_a_plain_loop_of_the_reference_loss(tmp_path):
    """``train.py data=mnist`` (default model, optimizer and callbacks), five steps: each loss,
    and the parameters after them, equal bit for bit those of a loop that takes the same inputs
    and noise, the torch.distributions reference loss and the configured (fused Adam)
    optimizer."""
    _fake_mnist(tmp_path / "data")
    Recorder.runs.clear()
    cfg = compose_train(["data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false",
                         "data.val_size=100", "trainer.max_steps=5", "logger=none",
                         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                         "+callbacks.record._target_=test_exact_step.Recorder"],
                        tmp_path / "run")
    train(cfg)
    (run,) = Recorder.runs
    assert len(run.steps) == len(run.losses) == 5
    reference = instantiate_node(cfg.model, "model", data_shape=SHAPE, steps_per_batch=1)
    reference.load_state_dict(run.start, strict=False)
    optimizer = instantiate(cfg.model.optimizer)(reference.parameters())
    for step, ((x, rng), loss) in enumerate(zip(run.steps, run.losses, strict=True)):
        torch.set_rng_state(rng)
        ref_loss = _reference_loss(reference, x)[0]
        assert torch.equal(loss, ref_loss), step
        optimizer.zero_grad()
        ref_loss.backward()
        optimizer.step()
    assert all(not torch.equal(run.start[name], run.end[name]) for name in run.end)  # trained
    for name, p in reference.named_parameters():
        assert torch.equal(run.end[name], p), name
