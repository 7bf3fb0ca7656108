"""KL schedules (``model/objective/kl_schedule``): the factor w_t in [0, 1] by which an
objective's KL term counts at optimizer step t (``model.global_step``, from 0), times the
objective's own weight of it (e.g. the ELBO's beta). One schedule object serves every objective
with a KL term; the bound they log is the true ELBO (weight 1) whatever w_t.

- ``Linear``: KL warm-up (Bowman et al. 2016; Sonderby et al. 2016), w_t = min(1, t / steps).
- ``Cyclical``: cyclical annealing (Fu et al. 2019, eq. 9), M ramps over T steps, each rising
  linearly over the first fraction R of its cycle and then held at 1:
  tau = mod(t, ceil(T / M)) / (T / M), w_t = tau / R if tau <= R else 1 (the paper's
  iteration t - 1 is our step t, so w = 0 at the first step of each cycle).
"""

from __future__ import annotations

import math
from typing import Annotated

from vae_lightning.args import PositiveInt, Range, checked, fail


class KLSchedule:
    """w_t, the KL term's factor at optimizer step ``step``: ``schedule(step)`` in [0, 1]."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Linear(KLSchedule):
    """KL warm-up: w_t rises linearly from 0 at step 0 to 1 at step ``steps``, then stays 1."""

    @checked
    def __init__(self, steps: PositiveInt) -> None:
        self.steps = steps

    def __call__(self, step: int) -> float:
        return min(1.0, step / self.steps)


class Cyclical(KLSchedule):
    """Cyclical annealing (Fu et al. 2019): ``cycles`` (M) cycles over ``total_steps`` (T), each
    a linear ramp from 0 to 1 over its first ``ratio`` (R) and 1 for the rest; the paper's
    setting is M = 4, R = 0.5. Past T the cycles go on with the same period."""

    @checked
    def __init__(self, total_steps: PositiveInt, cycles: PositiveInt = 4,
                 ratio: Annotated[float, Range(gt=0, le=1)] = 0.5) -> None:
        if cycles > total_steps:
            fail(self, "cycles", cycles, f"at most total_steps={total_steps}: each cycle takes "
                 "at least one step")
        self.total_steps, self.cycles, self.ratio = total_steps, cycles, ratio

    def __call__(self, step: int) -> float:
        period = self.total_steps / self.cycles
        tau = (step % math.ceil(period)) / period
        return tau / self.ratio if tau <= self.ratio else 1.0
