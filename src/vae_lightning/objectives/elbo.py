"""The ELBO objective of AEVB (Algorithm 1, eq. 8): minimise -(E_q[log p(x|z)] - beta_t KL)
averaged over the minibatch, with the SGVB estimator of ``kl`` and L = ``n_samples``.

beta_t = beta w_t: ``beta`` (beta-VAE for beta != 1) times the ``kl_schedule``'s w_t
(``kl_schedule``: e.g. cyclical annealing); ``warmup_steps`` N is ``kl_schedule=Linear(N)``,
w_t = min(1, t / N) (KL warm-up). The logged bound is the true (beta = 1) ELBO whatever the
weight."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import NonNegativeFloat, NonNegativeInt, PositiveInt, checked, fail
from vae_lightning.parts import Parts

from .base import KL, Bound, Objective, closed_form_kl, elbo_estimate, no_closed_form, probe
from .kl_schedule import KLSchedule, Linear


class ELBO(Objective):
    """The evidence lower bound (eq. 3) by SGVB: ``kl="auto"`` takes estimator B (eq. 7,
    analytic KL) where torch.distributions has KL(q || p) in closed form and estimator A (eq. 6)
    otherwise; ``"analytic"`` insists on B, ``"mc"`` on A."""

    @checked
    def __init__(self, n_samples: PositiveInt = 1, kl: KL = "auto",
                 beta: NonNegativeFloat = 1.0, warmup_steps: NonNegativeInt = 0,
                 kl_schedule: KLSchedule | None = None) -> None:
        if warmup_steps and kl_schedule is not None:
            fail(self, "kl_schedule", kl_schedule, f"null when warmup_steps={warmup_steps} is "
                 "set: warmup_steps is the Linear schedule; set one of them")
        self.n_samples, self.kl = n_samples, kl
        self.beta, self.warmup_steps = beta, warmup_steps
        self.kl_schedule = Linear(warmup_steps) if warmup_steps else kl_schedule

    @property
    def step_dependent(self) -> bool:
        """Whether the loss changes with the step (a CUDA graph captures one step's loss)."""
        return self.kl_schedule is not None

    def kl_weight(self, step: int) -> float:
        """beta_t: the KL weight at optimizer step ``step`` (``beta`` times the schedule's)."""
        ramp = self.kl_schedule(step) if self.kl_schedule is not None else 1.0
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
