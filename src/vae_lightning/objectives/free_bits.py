"""The ELBO with free bits (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improved
variational inference with inverse autoregressive flow", Sec. on free bits): the KL term of each
latent dimension j, averaged over the minibatch M, counts for at least lambda nats,

    L~ = E_M[ E_q log p(x|z) ] - sum_j max(lambda, E_M[ KL(q(z_j|x) || p(z_j)) ]),

so the optimizer gains nothing by pushing a dimension's KL below lambda: latent units are not
switched off early in training. With ``groups`` K the latent dimensions are split into K
contiguous groups (of sizes that differ by at most one) and the floor holds per group, on the sum
of its dimensions' KLs (the paper's variant): sum_k max(lambda, E_M[ sum_{j in k} KL_j ]).
``kl_schedule`` scales the floored term (w_t). The per-dimension KL is analytic where
torch.distributions has the pair for one dimension, else the Monte-Carlo log q(z_j|x) -
log p(z_j) of the same samples. It needs q and p to be products over the dimensions
(``factorized``). The logged bound is the true ELBO (the sum of the per-dimension KLs, without
the floor)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_lightning.args import NonNegativeFloat, PositiveInt, checked
from vae_lightning.parts import Bound, Parts

from .base import KL, Objective, closed_form_kl, no_closed_form, probe
from .kl_schedule import KLSchedule
from .regularized import Regularized


class FreeBits(Regularized, Objective):
    """The ELBO with a floor of ``threshold`` nats (lambda) on each latent dimension's minibatch
    KL, or each of ``groups`` groups' (null: one group per dimension); ``n_samples`` samples of z
    per data point and the ``kl`` estimator as ``ELBO``'s."""

    requires = frozenset({"rsample", "factorized"})
    requires_prior = frozenset({"factorized"})

    @checked
    def __init__(self, threshold: NonNegativeFloat = 0.25, n_samples: PositiveInt = 1,
                 kl: KL = "auto", groups: PositiveInt | None = None,
                 kl_schedule: KLSchedule | None = None) -> None:
        self.threshold, self.n_samples, self.kl = threshold, n_samples, kl
        self.groups, self.kl_schedule = groups, kl_schedule

    def terms(self, model: Parts, x: Tensor) -> tuple[Tensor, Tensor]:
        """E_q[log p(x|z)] per data point ``[batch]`` and the KL per data point and latent
        dimension ``[batch, latent]``."""
        q, p = model.encoder(x), model.prior.distribution()
        z = q.rsample((self.n_samples,))
        recon = model.decoder(z).log_prob(x).mean(0)
        return recon, per_dimension_kl(q, p, z, self.kl)

    def bound(self, model: Parts, x: Tensor) -> Bound:
        recon, kl = self.terms(model, x)
        return Bound(recon, kl.sum(-1))

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        recon, kl = self.terms(model, x)
        kl_mean = kl.mean(0)
        if self.groups is not None:
            kl_mean = torch.stack([group.sum() for group in kl_mean.tensor_split(self.groups)])
        floored = kl_mean.clamp(min=self.threshold).sum()
        if self.kl_schedule is not None:
            floored = self.kl_factor(model.global_step) * floored
        return floored - recon.mean(), Bound(recon, kl.sum(-1))

    def check(self, model: Parts) -> None:
        if self.groups is not None and self.groups > model.latent:
            raise ValueError(f"model.objective.groups={self.groups} is more groups than the "
                             f"{model.latent} latent dimensions: at most model.latent "
                             "(null: one per dimension).")
        if self.kl == "analytic":
            q, p = probe(model)
            if closed_form_kl(q.base_dist, p.base_dist) is None:
                raise ValueError(no_closed_form(q, p))


def per_dimension_kl(q: Distribution, p: Distribution, z: Tensor, kl: KL) -> Tensor:
    """KL(q(z_j|x) || p(z_j)) per data point and dimension, ``[batch, latent]``, for q and p
    products over the dimensions (``Independent`` of one-dimensional distributions): analytic
    unless ``kl="mc"`` or the one-dimensional pair has no closed form, else from the samples
    ``z`` ``[n, batch, latent]`` of q."""
    q1, p1 = q.base_dist, p.base_dist
    analytic = closed_form_kl(q1, p1) if kl != "mc" else None
    if analytic is not None:
        return analytic.expand(z.shape[1:])
    return (q1.log_prob(z) - p1.log_prob(z)).mean(0)
