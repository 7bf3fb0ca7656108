"""Callbacks that tests add through the config (`+callbacks.x._target_=fault_injection.X`)."""

import os
import signal

import lightning as L
import torch


class KillAtStep(L.Callback):
    """SIGKILL this process when training reaches ``step``: a crash with no chance to clean up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NaNInputAtStep(L.Callback):
    """Put a NaN pixel into the training minibatch of optimizer step ``step``, also when a batch
    holds several minibatches (``data.steps_per_batch``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        minibatches = [batch] if isinstance(batch[0], torch.Tensor) else batch
        if 0 <= self.step - trainer.global_step < len(minibatches):
            minibatches[self.step - trainer.global_step][0][0, 0] = float("nan")


class NaNGradientAtStep(L.Callback):
    """Make one gradient element NaN after the backward pass of optimizer step ``step`` (its loss
    finite), as an objective's 0 x inf would: the update that follows breaks a parameter."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = \
                float("nan")


class SigtermAt(L.Callback):
    """Send this process SIGTERM once from ``hook`` of the Trainer call ``fn`` (fit, validate,
    test), at a moment a test chooses instead of one a race picks: ``setup``, before Lightning
    installs its handler (the job has started, nothing has trained); ``on_train_batch_start``,
    in the first step, before any checkpoint; ``on_train_end``,
    ``on_validation_end`` and ``on_test_end``, where Lightning's loops no longer look for it."""

    def __init__(self, fn: str, hook: str) -> None:
        self.fn, self.hook, self.sent = fn, hook, False

    def _maybe(self, trainer, hook: str) -> None:
        if not self.sent and trainer.state.fn == self.fn and hook == self.hook:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def setup(self, trainer, pl_module, stage) -> None:  # before Lightning takes the signal
        self._maybe(trainer, "setup")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe(trainer, "on_train_batch_start")  # the first: before any checkpoint

    def on_train_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, "on_train_end")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, "on_validation_end")

    def on_test_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, "on_test_end")
