"""Stochastic estimators of the variational lower bound, per data point, in nats.

- ELBO (eq. 3): L(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), estimated with L samples
  z_l = g_phi(eps_l, x) either with the analytic KL (SGVB estimator B, eq. 7) or with the
  Monte-Carlo KL log q(z_l|x) - log p(z_l) (estimator A, eq. 6).
- Importance-weighted bound (Burda et al. 2015): log (1/k) sum_i p(x, z_i) / q(z_i|x); k = 1 is
  estimator A of the ELBO, and it tightens towards log p(x) as k grows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from vae_lightning.likelihoods import Decoder
from vae_lightning.priors import Prior


class Bound(NamedTuple):
    """Per-data-point terms of the lower bound, each of shape ``[batch]``."""

    recon: Tensor  # E_q[log p(x|z)]
    kl: Tensor  # KL(q(z|x) || p(z))

    @property
    def elbo(self) -> Tensor:
        return self.recon - self.kl


class Samples(NamedTuple):
    """log p(x|z_l), log p(z_l) and log q(z_l|x) for n samples z_l ~ q(z|x): each ``[n, batch]``."""

    log_px_z: Tensor
    log_pz: Tensor
    log_qz: Tensor

    @property
    def log_w(self) -> Tensor:
        """Log importance weights log p(x, z_l) - log q(z_l|x)."""
        return self.log_px_z + self.log_pz - self.log_qz

    def bound(self) -> Bound:
        """The ELBO by estimator A (eq. 6): Monte-Carlo reconstruction and KL."""
        return Bound(self.log_px_z.mean(0), (self.log_qz - self.log_pz).mean(0))


def draw(x: Tensor, q: Distribution, decoder: Decoder, prior: Prior, n: int) -> Samples:
    """Draw n reparameterized samples z = g_phi(eps, x) and score them."""
    z = q.rsample((n,))
    return Samples(decoder(z).log_prob(x), prior.log_prob(z), q.log_prob(z))


def elbo(
    x: Tensor,
    q: Distribution,
    decoder: Decoder,
    prior: Prior,
    n_samples: int = 1,
    analytic_kl: bool = True,
) -> Bound:
    """The ELBO of each row of ``x`` under ``q = q(z|x)`` with L = ``n_samples``: estimator B
    (eq. 7, analytic KL) when ``analytic_kl``, else estimator A (eq. 6)."""
    if not analytic_kl:
        return draw(x, q, decoder, prior, n_samples).bound()
    z = q.rsample((n_samples,))
    return Bound(decoder(z).log_prob(x).mean(0), kl_divergence(q, prior.distribution()))


def iwae(log_w: Tensor) -> Tensor:
    """The importance-weighted bound log (1/k) sum_i w_i from log-weights ``[k, batch]``."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
