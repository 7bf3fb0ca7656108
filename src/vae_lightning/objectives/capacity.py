"""The capacity-controlled beta-VAE (Burgess, Higgins, Pal, Matthey, Watters, Desjardins &
Lerchner 2018, "Understanding disentangling in beta-VAE", eq. 8):

    L = E_q[log p(x|z)] - gamma |KL(q(z|x) || p(z)) - C|,

with the KL averaged over the minibatch and the capacity C raised linearly from 0 to ``capacity``
(C_max, nats) over ``capacity_steps`` optimizer steps, so that the encoder may carry C nats about
x, more as training goes on (the paper's dSprites setting: gamma = 1000, C_max = 25 nats over
1e5 steps). The bound logged is the true ELBO."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import NonNegativeFloat, NonNegativeInt, checked
from vae_lightning.parts import Bound, Parts

from .base import Objective, elbo_estimate
from .kl_schedule import Linear
from .regularized import Regularized


class Capacity(Regularized, Objective):
    """gamma |KL - C_t| with C_t = ``capacity`` x min(1, t / ``capacity_steps``) (C_max from
    the first step when ``capacity_steps`` is 0). Logs ``train/capacity``, C_t in nats."""

    checkpoint = "last"  # a KL held at C, not the ELBO, is trained

    @checked
    def __init__(self, gamma: NonNegativeFloat = 1000.0, capacity: NonNegativeFloat = 25.0,
                 capacity_steps: NonNegativeInt = 100000) -> None:
        self.gamma, self.capacity, self.capacity_steps = gamma, capacity, capacity_steps
        self._ramp = Linear(capacity_steps) if capacity_steps else None

    @property
    def step_dependent(self) -> bool:
        return self._ramp is not None

    def capacity_at(self, step: int) -> float:
        """C_t, the target KL in nats at optimizer step ``step``."""
        return self.capacity * (self._ramp(step) if self._ramp is not None else 1.0)

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        bound = elbo_estimate(model, x)
        target = self.capacity_at(model.global_step)
        self.report(capacity=bound.kl.new_tensor(target))
        return -bound.recon.mean() + self.gamma * (bound.kl.mean() - target).abs(), bound
