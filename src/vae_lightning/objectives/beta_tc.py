"""beta-TC-VAE (Chen, Li, Grosse & Duvenaud 2018, "Isolating sources of disentanglement in
VAEs"). The ELBO's KL term averaged over the data splits (their eq. 2) into

    E_p(n)[KL(q(z|n) || p(z))] = I_q(z; n) + KL(q(z) || prod_j q(z_j)) + sum_j KL(q(z_j) || p(z_j)),

the index-code mutual information, the total correlation and the dimension-wise KL, where
q(z) = (1/N) sum_n q(z|n) is the aggregate posterior of the N training points. The objective
(eq. 4) weights them apart:

    L = E_q[log p(x|z)] - alpha I_q(z; n) - beta KL(q(z) || prod_j q(z_j))
        - gamma sum_j KL(q(z_j) || p(z_j)).

Per sample z_i ~ q(z|x_i) of a minibatch x_1..x_M: MI_i = log q(z_i|x_i) - log q(z_i),
TC_i = log q(z_i) - sum_j log q(z_ij), DWKL_i = sum_j log q(z_ij) - log p(z_i), which add up to
log q(z_i|x_i) - log p(z_i), the Monte-Carlo KL. log q(z_i) is estimated from the minibatch as
log sum_m w_im q(z_i|x_m), and each marginal log q(z_ij) with the same weights on dimension j:

- ``mws``, minibatch-weighted sampling (Sec. 4.1, eq. 6; App. C.1): w_im = 1/M. The paper writes
  1/(NM), weights that add up to 1/N: log q(z) - log N in the limit. The constant does not move
  the gradients, but it shifts each logged term by a multiple of log N, so the weights here add
  up to 1 (the estimate is exact when the minibatch is the whole data set).
- ``mss``, minibatch-stratified sampling (App. C.2): w_ii = 1/N, w_im = (N - M + 1) / (N (M - 1))
  for one other point (m = i + 1 mod M) and 1/(M - 1) for the M - 2 others: an unbiased estimate
  of q(z_i) for minibatches drawn without replacement, which needs N (``dataset_size``).

It needs log q(z|x_m) at every other point's sample (``density``) and q and p that factorize
over the dimensions (the marginals q(z_j), p(z_j)). ``alpha = beta = gamma = 1`` is the ELBO
(estimator A); the bound logged is always the true ELBO. ``kl_schedule`` scales the three terms
together (the KL they split)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_lightning.args import NonNegativeFloat, PositiveInt, checked, fail
from vae_lightning.errors import ConfigError
from vae_lightning.parts import Bound, Parts

from .base import Objective
from .kl_schedule import KLSchedule
from .regularized import Regularized, sample_bound

Estimator = Literal["mws", "mss"]


class BetaTC(Regularized, Objective):
    """The beta-TC-VAE objective: weights ``alpha`` (index-code MI), ``beta`` (total
    correlation) and ``gamma`` (dimension-wise KL), q(z) by the ``estimator`` ``mws`` or ``mss``
    (the latter with ``dataset_size`` N, the number of training points). Logs ``train/mi``,
    ``train/tc`` and ``train/dwkl``, in nats per data point."""

    checkpoint = "last"  # a weighted KL, not the ELBO, is trained
    requires = frozenset({"rsample", "density", "factorized"})
    requires_prior = frozenset({"factorized"})

    @checked
    def __init__(self, alpha: NonNegativeFloat = 1.0, beta: NonNegativeFloat = 6.0,
                 gamma: NonNegativeFloat = 1.0, estimator: Estimator = "mws",
                 dataset_size: PositiveInt | None = None,
                 kl_schedule: KLSchedule | None = None) -> None:
        if estimator == "mss" and dataset_size is None:
            fail(self, "dataset_size", None, "the number of training points N, which "
                 "estimator=mss weights the minibatch by (estimator=mws needs none)")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.estimator, self.dataset_size, self.kl_schedule = estimator, dataset_size, kl_schedule

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        z, q, p, bound = sample_bound(model, x)
        if self.estimator == "mss" and self.dataset_size < len(x):
            raise ConfigError(
                f"model.objective.dataset_size={self.dataset_size} is smaller than the "
                f"minibatch of {len(x)}: it must be the number of training points N, which "
                "minibatch-stratified sampling weights the minibatch by; set it to the size of "
                "the training split.")
        log_w = log_weights(len(x), self.estimator, self.dataset_size, z.device)
        mi, tc, dwkl = decompose(q, p, z, log_w)
        penalty = self.alpha * mi + self.beta * tc + self.gamma * dwkl
        self.report(mi=mi, tc=tc, dwkl=dwkl)
        weight = self.kl_factor(model.global_step)
        return -(bound.recon - weight * penalty).mean(), bound


def log_weights(m: int, estimator: Estimator, dataset_size: int | None,
                device: torch.device | None = None) -> Tensor:
    """log w_im, ``[M, M]``: row i weights the minibatch's posteriors q(z_i | x_m) into the
    estimate of q(z_i) (module docstring); a minibatch of one point estimates q(z) by
    q(z|x_1)."""
    if m == 1:
        return torch.zeros(1, 1, device=device)
    if estimator == "mws":
        return torch.full((m, m), -math.log(m), device=device)
    n = dataset_size
    w = torch.full((m, m), 1.0 / (m - 1), dtype=torch.float64)
    i = torch.arange(m)
    w[i, (i + 1) % m] = (n - m + 1) / (n * (m - 1))
    w[i, i] = 1.0 / n
    return w.log().to(device=device, dtype=torch.get_default_dtype())


def decompose(q: Distribution, p: Distribution, z: Tensor,
              log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The index-code MI, total correlation and dimension-wise KL of each sample z_i ~ q(z|x_i)
    ``[M, latent]``, each ``[M]``, with q(z) estimated by the weights ``log_w`` ``[M, M]``; q and
    p are products over the dimensions (``Independent``)."""
    log_q = q.base_dist.log_prob(z.unsqueeze(1))  # [i, m, j]: log q(z_ij | x_m)
    log_q_own = log_q.diagonal(dim1=0, dim2=1).sum(0)  # log q(z_i | x_i)
    log_qz = torch.logsumexp(log_w + log_q.sum(-1), dim=1)
    log_marginals = torch.logsumexp(log_w.unsqueeze(-1) + log_q, dim=1).sum(-1)
    log_pz = p.base_dist.log_prob(z).sum(-1)
    return log_q_own - log_qz, log_qz - log_marginals, log_marginals - log_pz
