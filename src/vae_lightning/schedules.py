"""Learning-rate schedules (``model.schedule``): factors of the optimizer's learning rate by
epoch, for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

from collections.abc import Sequence

from vae_lightning.args import PositiveFloat, PositiveInt, checked


class StagedDecay:
    """The IWAE paper's schedule (Burda et al. 2015, Sec. 5): stage i = 0, 1, ... lasts
    ``base``^i epochs at the learning rate lr * ``decay``^i (their 3^i epochs at
    1e-3 * 10^(-i/7), i = 0..7: 3280 epochs).

    ``factors``, when given, are the stages' factors instead of ``decay``^i (the last one holds
    for every later stage): the authors' code rounds the rates to two significant digits,
    1e-4 * round(10^(1 - i/7), 1), i.e. factors 1, 0.72, 0.52, 0.37, 0.27, 0.19, 0.14, 0.1."""

    @checked
    def __init__(self, base: PositiveInt = 3, decay: PositiveFloat = 10 ** (-1 / 7),
                 factors: Sequence[PositiveFloat] | None = None) -> None:
        self.base, self.decay = base, decay
        self.factors = tuple(factors) if factors else None

    def stage(self, epoch: int) -> int:
        """The stage that epoch ``epoch`` (from 0) belongs to."""
        stage, end = 0, 1
        while epoch >= end:
            stage += 1
            end += self.base ** stage
        return stage

    def __call__(self, epoch: int) -> float:
        stage = self.stage(epoch)
        if self.factors:
            return self.factors[min(stage, len(self.factors) - 1)]
        return self.decay ** stage
