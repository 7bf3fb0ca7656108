"""The ELBO objective of AEVB (Algorithm 1, eq. 8): minimise -(E_q[log p(x|z)] - beta_t KL)
averaged over the minibatch, with the SGVB estimator of ``kl`` and L = ``n_samples``.

beta_t ramps linearly from 0 to ``beta`` over ``warmup_steps`` (KL warm-up; beta-VAE for
beta != 1). The logged bound is the true (beta = 1) ELBO whatever the weight."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import NonNegativeFloat, NonNegativeInt, PositiveInt, checked
from vae_lightning.parts import Parts

from .base import KL, Bound, Objective, closed_form_kl, elbo_estimate, no_closed_form, probe


class ELBO(Objective):
    """The evidence lower bound (eq. 3) by SGVB: ``kl="auto"`` takes estimator B (eq. 7,
    analytic KL) where torch.distributions has KL(q || p) in closed form and estimator A (eq. 6)
    otherwise; ``"analytic"`` insists on B, ``"mc"`` on A."""

    @checked
    def __init__(self, n_samples: PositiveInt = 1, kl: KL = "auto",
                 beta: NonNegativeFloat = 1.0, warmup_steps: NonNegativeInt = 0) -> None:
        self.n_samples, self.kl = n_samples, kl
        self.beta, self.warmup_steps = beta, warmup_steps

    def kl_weight(self, step: int) -> float:
        """beta_t: the KL weight at optimizer step ``step`` (linear warm-up, then ``beta``)."""
        ramp = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return self.beta * ramp

    def bound(self, model: Parts, x: Tensor) -> Bound:
        return elbo_estimate(model, x, self.n_samples, self.kl)

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        bound = self.bound(model, x)
        return -(bound.recon - self.kl_weight(model.global_step) * bound.kl).mean(), bound

    def check(self, model: Parts) -> None:
        if self.kl == "analytic":
            q, p = probe(model)
            if closed_form_kl(q, p) is None:
                raise ValueError(no_closed_form(q, p))
