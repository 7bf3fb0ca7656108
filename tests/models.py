"""Small VAEs built in Python, as a user composes one without Hydra: the parts, then ``VAE``."""

from __future__ import annotations

from functools import partial

import torch

from vae_lightning.likelihoods import Bernoulli, Decoder, Likelihood
from vae_lightning.module import VAE
from vae_lightning.nets import MLP
from vae_lightning.objectives import Objective
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.posteriors import Encoder, Family, Gaussian
from vae_lightning.priors import Prior, StandardNormal, VampPrior

SHAPE = (1, 3, 4)  # 12 pixels


def small_vae(
    data_shape: tuple[int, ...] = SHAPE,
    latent: int = 2,
    hidden: tuple[int, ...] = (8,),
    likelihood: Likelihood | None = None,
    posterior: Family | None = None,
    prior: type[Prior] | Prior = StandardNormal,
    objective: Objective | None = None,
    activation: str = "relu",
    **kwargs,
) -> VAE:
    """An MLP VAE for images of ``data_shape``; ``prior`` a class (built for the sizes) or a
    prior."""
    net = partial(MLP, hidden=hidden, activation=activation)
    if isinstance(prior, type):
        prior = (prior(latent, data_shape, n_components=4) if prior is VampPrior
                 else prior(latent))
    return VAE(
        Encoder(net, posterior or Gaussian(), data_shape, latent),
        Decoder(net, likelihood or Bernoulli(), data_shape, latent),
        prior,
        objective or ELBO(),
        latent=latent,
        data_shape=data_shape,
        **kwargs,
    )


def binary_images(n: int = 256, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> torch.Tensor:
    """Binary images ``[n, *shape]`` from two latent factors, so a 2-d VAE can fit them."""
    g = torch.Generator().manual_seed(seed)
    dim = 1
    for d in shape:
        dim *= d
    z = torch.randn(n, 2, generator=g)
    logits = 3.0 * z @ torch.randn(2, dim, generator=g)
    return torch.bernoulli(torch.sigmoid(logits), generator=g).reshape(n, *shape)


class NamedPrior(StandardNormal):
    """A user's own prior class: a checkpoint may build it only when the user trusts it."""


def fit(model: VAE, x: torch.Tensor, steps: int = 150, batch: int = 64,
        lr: float = 1e-2) -> list[float]:
    """``steps`` Adam steps of the model's objective on random minibatches of ``x``: the
    losses, in order."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = model.objective.loss(model, x[torch.randint(len(x), (batch,))])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
