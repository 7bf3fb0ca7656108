"""Learning-rate schedules (``model.schedule``): factors of the optimizer's learning rate by
epoch, for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

from vae_lightning.args import PositiveFloat, PositiveInt, checked


class StagedDecay:
    """The IWAE paper's schedule (Burda et al. 2015, Sec. 5): stage i = 0, 1, ... lasts
    ``base``^i epochs at the learning rate lr * ``decay``^i (their 3^i epochs at
    1e-3 * 10^(-i/7), i = 0..7: 3280 epochs)."""

    @checked
    def __init__(self, base: PositiveInt = 3, decay: PositiveFloat = 10 ** (-1 / 7)) -> None:
        self.base, self.decay = base, decay

    def stage(self, epoch: int) -> int:
        """The stage that epoch ``epoch`` (from 0) belongs to."""
        stage, end = 0, 1
        while epoch >= end:
            stage += 1
            end += self.base ** stage
        return stage

    def __call__(self, epoch: int) -> float:
        return self.decay ** self.stage(epoch)

