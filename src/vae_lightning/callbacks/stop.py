"""Stopping on a signal without losing work.

SIGTERM (what a scheduler sends before it kills a job) and a first SIGINT (Ctrl-C) stop training
after the current optimizer step, as ``trainer.max_samples`` does: the epoch-end hooks run, so
``checkpoints/last.ckpt`` holds the state at that step and the run resumes exactly from it. The
command then ends with exit code 128 + the signal's number and says how to resume
(``train.py``). A second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import lightning as L

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop(L.Callback):
    """Turns SIGTERM and SIGINT into ``trainer.should_stop``; ``received`` is the signal."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread

        def stop(signum: int, frame: FrameType | None) -> None:
            if self.received == signal.SIGINT and signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C
            self.received = signum
            trainer.should_stop = True

        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, stop)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
