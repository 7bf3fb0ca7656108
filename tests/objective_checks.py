"""Shared checks of the objectives of the ``model/objective`` group: a few optimizer steps of a
small VAE with the composer's own optimizers, and the objective's loss and true ELBO before and
after them."""

from __future__ import annotations

from typing import NamedTuple

import torch
from models import binary_images, small_vae

from vae_lightning.objectives import Objective


class Fit(NamedTuple):
    """The objective's loss and the mean true ELBO on the data, before and after training."""

    loss_before: float
    loss_after: float
    elbo_before: float
    elbo_after: float


def _optimizers(model) -> list:
    """The model's optimizers as the composer builds them (``VAE.configure_optimizers``): the
    model's first, then one per update of the objective's own parameters."""
    configured = model.configure_optimizers()
    entries = configured if isinstance(configured, list) else [configured]
    return [e["optimizer"] if isinstance(e, dict) else e for e in entries]


def fit(objective: Objective, steps: int = 100, lr: float = 3e-2, latent: int = 2,
        seed: int = 0, **parts) -> Fit:
    """Train a small VAE with ``objective`` for ``steps`` steps on fixed binary images, each
    model step followed by the objective's own updates (as ``VAE.training_step`` takes them),
    and score the loss and the ELBO at the same random states before and after. One thread:
    this small a model trains faster without the overhead of sharing each product out."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(objective, steps, lr, latent, seed, **parts)
    finally:
        torch.set_num_threads(threads)


def _fit(objective: Objective, steps: int, lr: float, latent: int, seed: int, **parts) -> Fit:
    torch.manual_seed(seed)
    model = small_vae(latent=latent, objective=objective,
                      optimizer=lambda params: torch.optim.Adam(params, lr=lr), **parts)
    x = binary_images(128)

    def score(draws: int = 10) -> tuple[float, float]:
        """The loss and the ELBO averaged over ``draws`` fixed random states."""
        scores = []
        for draw in range(draws):
            torch.manual_seed(seed + 1 + draw)
            loss, bound = objective.loss(model, x)
            scores.append((loss.item(), bound.elbo.mean().item()))
        return tuple(sum(column) / draws for column in zip(*scores))

    before = score()
    optimizer, *auxiliary = _optimizers(model)
    for _ in range(steps):
        loss, _ = objective.loss(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for update, aux_optimizer in zip(objective.auxiliary(), auxiliary):
            aux_optimizer.zero_grad()
            update.loss(model, x).backward()
            aux_optimizer.step()
    after = score()
    return Fit(before[0], after[0], before[1], after[1])
