"""FactorVAE (Kim & Mnih 2018, "Disentangling by factorising"): the ELBO with a penalty on the
total correlation of the aggregate posterior q(z) (their eq. 2),

    L = E_q[log p(x|z)] - KL(q(z|x) || p(z)) - gamma KL(q(z) || q_bar(z)),

q_bar(z) = prod_j q(z_j). The TC is estimated by the density-ratio trick: a discriminator D(z),
the probability that z came from q(z) rather than from q_bar(z), trained to tell samples of q(z)
from samples of q_bar(z), approaches D* = q / (q + q_bar), so its logit log D / (1 - D)
approaches log q(z) / q_bar(z) and TC = E_q(z)[logit D(z)] (eq. 3).

Training follows Algorithm 2: after each step of the VAE on -L with TC = the mean logit at the
minibatch's samples z ~ q(z|x), the discriminator takes a step of its own optimizer (Adam,
lr 1e-4, betas (0.5, 0.9)) on the cross-entropy of the logits at fresh samples z ~ q(z|x)
(label 1) and at a second draw for the same minibatch with each dimension permuted across the
minibatch independently (Algorithm 1), which are samples of q_bar(z) (label 0). The paper draws
that second set from another minibatch; the same minibatch's second draw serves here, so that the
update needs only the step's data. The discriminator (the paper's: 6 layers of 1000 units,
LeakyReLU 0.2, here with one logit instead of two softmax outputs, the same family) is the
objective's own parameters (``Objective.auxiliary``), saved in the model's checkpoints."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vae_lightning.args import NonNegativeFloat, PositiveInt, checked
from vae_lightning.parts import Bound, Parts

from .base import Auxiliary, Objective
from .kl_schedule import KLSchedule
from .regularized import Regularized, sample_bound

ADAM = functools.partial(torch.optim.Adam, lr=1e-4, betas=(0.5, 0.9))  # the paper's


class FactorVAE(Regularized, Objective, nn.Module):
    """The FactorVAE objective for ``latent`` dimensions with TC weight ``gamma``; the
    discriminator's layers ``hidden`` and its ``optimizer`` (called with its parameters).
    Logs ``train/tc``, the discriminator's estimate of the total correlation in nats."""

    checkpoint = "last"  # the ELBO with a TC penalty, not the ELBO, is trained

    @checked
    def __init__(self, latent: PositiveInt, gamma: NonNegativeFloat = 40.0,
                 hidden: Sequence[PositiveInt] = (1000,) * 6,
                 optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = ADAM,
                 kl_schedule: KLSchedule | None = None) -> None:
        nn.Module.__init__(self)
        self.latent, self.gamma, self.hidden = latent, gamma, tuple(hidden)
        self.optimizer, self.kl_schedule = optimizer, kl_schedule
        self.discriminator = discriminator(latent, self.hidden)

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        z, _, _, bound = sample_bound(model, x)
        tc = self.discriminator(z).squeeze(-1)  # log q(z) / q_bar(z) at each sample
        self.report(tc=tc)
        weight = self.kl_factor(model.global_step)
        return -(bound.recon - weight * bound.kl - self.gamma * tc).mean(), bound

    def discriminator_loss(self, model: Parts, x: Tensor) -> Tensor:
        """The discriminator's cross-entropy: samples of q(z) (label 1) against dimension-wise
        permuted samples, of q_bar(z) (label 0); the VAE is held fixed."""
        with torch.no_grad():
            q = model.encoder(x)
            joint, product = q.sample(), permute_dims(q.sample())
        return 0.5 * (F.softplus(-self.discriminator(joint)).mean()
                      + F.softplus(self.discriminator(product)).mean())

    def auxiliary(self) -> Sequence[Auxiliary]:
        return [Auxiliary(self.discriminator.parameters, self.optimizer,
                          self.discriminator_loss)]

    def check(self, model: Parts) -> None:
        if self.latent != model.latent:
            raise ValueError(f"model.objective.latent={self.latent} must be the model's latent "
                             f"size, {model.latent} (the discriminator reads z): leave it at "
                             "${..latent}.")

    def __repr__(self) -> str:
        return (f"FactorVAE(latent={self.latent}, gamma={self.gamma}, hidden={list(self.hidden)}"
                f", kl_schedule={self.kl_schedule!r})")


def discriminator(latent: int, hidden: Sequence[int]) -> nn.Sequential:
    """An MLP from z to one logit, LeakyReLU(0.2) between layers (the paper's)."""
    sizes = [latent, *hidden]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 1))


def permute_dims(z: Tensor) -> Tensor:
    """Each dimension of the samples ``z`` ``[batch, latent]`` permuted across the batch
    independently (Algorithm 1): samples of prod_j q(z_j) when z are samples of q(z)."""
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)
