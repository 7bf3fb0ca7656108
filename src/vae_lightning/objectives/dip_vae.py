"""DIP-VAE (Kumar, Sattigeri & Balakrishnan 2018, "Variational inference of disentangled latent
concepts from unlabeled observations"): the ELBO with a penalty that moves the covariance C of
the aggregate posterior towards the identity (their eq. 6),

    L = ELBO - lambda_od sum_{i != j} C_ij^2 - lambda_d sum_i (C_ii - 1)^2,

- DIP-VAE-I: C = Cov_p(x)[mu(x)], the covariance of the posterior means (eq. 7);
- DIP-VAE-II: C = Cov_q(z)[z] = E_p(x)[Sigma(x)] + Cov_p(x)[mu(x)] (eq. 8), with Sigma(x) the
  covariance of q(z|x) (diagonal: q factorizes over the dimensions).

The moments are those of the minibatch: Cov[mu] = (1/M) sum_m (mu_m - mean mu)(mu_m - mean mu)^T
and E[Sigma] = (1/M) sum_m diag(Var q(z|x_m)). The paper's settings: lambda_d = 10 lambda_od for
DIP-VAE-I, lambda_d = lambda_od for DIP-VAE-II."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vae_lightning.args import NonNegativeFloat, checked
from vae_lightning.parts import Bound, Parts

from .base import Objective
from .kl_schedule import KLSchedule
from .regularized import Regularized, sample_bound


class DIPVAE(Regularized, Objective):
    """DIP-VAE of ``kind`` ``i`` (the posterior means' covariance) or ``ii`` (z's covariance
    under q(z)), with weights ``lambda_od`` (off-diagonal) and ``lambda_d`` (diagonal). Logs
    ``train/dip_offdiag`` (sum_{i != j} C_ij^2) and ``train/dip_diag`` (sum_i (C_ii - 1)^2)."""

    checkpoint = "last"  # the ELBO with a covariance penalty, not the ELBO, is trained

    @checked
    def __init__(self, kind: Literal["i", "ii"] = "i", lambda_od: NonNegativeFloat = 10.0,
                 lambda_d: NonNegativeFloat = 100.0,
                 kl_schedule: KLSchedule | None = None) -> None:
        self.kind, self.lambda_od, self.lambda_d = kind, lambda_od, lambda_d
        self.kl_schedule = kl_schedule

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        # II reads each q(z|x)'s (diagonal) variance.
        return frozenset({"rsample", "factorized", "finite_variance"} if self.kind == "ii"
                         else {"rsample"})

    def covariance(self, model: Parts, q) -> Tensor:
        """C, ``[latent, latent]``, for the minibatch's posteriors ``q``."""
        return covariance(model.encoder.location(q), q.variance if self.kind == "ii" else None)

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        _, q, _, bound = sample_bound(model, x)
        off_diagonal, diagonal = penalties(self.covariance(model, q))
        self.report(dip_offdiag=off_diagonal, dip_diag=diagonal)
        weight = self.kl_factor(model.global_step)
        elbo = (bound.recon - weight * bound.kl).mean()
        return -elbo + self.lambda_od * off_diagonal + self.lambda_d * diagonal, bound


def covariance(mu: Tensor, variance: Tensor | None = None) -> Tensor:
    """Cov[mu] over the rows of ``mu`` ``[M, latent]`` (normalised by M), plus diag(mean
    ``variance``) when given (DIP-VAE-II's E[Sigma])."""
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / mu.shape[0]
    return cov if variance is None else cov + torch.diag(variance.mean(0))


def penalties(cov: Tensor) -> tuple[Tensor, Tensor]:
    """sum_{i != j} C_ij^2 and sum_i (C_ii - 1)^2."""
    diagonal = cov.diagonal()
    return cov.pow(2).sum() - diagonal.pow(2).sum(), (diagonal - 1).pow(2).sum()
