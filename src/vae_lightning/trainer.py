"""Lightning's Trainer with a training length in samples seen (Figure 2's x-axis) and atomic
checkpoint writes."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

import lightning as L
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler

from vae_lightning.args import NonNegativeInt, PositiveFloat, PositiveInt, Range, checked, fail
from vae_lightning.callbacks import summary
from vae_lightning.callbacks.curve import SampleBudget
from vae_lightning.checkpoints import AtomicCheckpointIO

_NO_SCOPE = contextlib.nullcontext()
# Lightning's limit_*_batches and overfit_batches: a number of batches, or a fraction of them.
BatchLimit = NonNegativeInt | Annotated[float, Range(ge=0, le=1)]


class Bar(TQDMProgressBar):
    """Lightning's bar, whose count for an epoch also ends where ``trainer.max_samples`` stops
    the run (``SampleBudget``), as Lightning's own ends at ``max_steps``: a short try stopped
    within its first epoch showed the whole epoch and an ETA several times too long."""

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        trainer = self.trainer
        budget = next((c for c in trainer.callbacks if isinstance(c, SampleBudget)), None)
        data = trainer.datamodule
        size = getattr(data, "batch_size", None)
        seen = getattr(trainer.lightning_module, "samples_seen", None)
        if budget is None or not isinstance(size, int) or size < 1 or seen is None:
            return total
        per_batch = size * trainer.world_size * max(1, getattr(data, "steps_per_batch", 1))
        left = budget.max_samples - seen
        return min(total, max(1, math.ceil(left / per_batch)))


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler (none), with ``profile`` one shared empty context: Lightning
    wraps every hook call in ``profiler.profile(...)``, dozens a training step, and the
    pass-through's generator-made context costs more than most of the hooks it wraps."""

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return _NO_SCOPE


class Trainer(L.Trainer):
    """``lightning.Trainer`` (every argument of it works) and ``max_samples``: stop after the
    optimizer step at which this many training samples (all ranks) were seen, Fig. 2's x-axis;
    it replaces ``max_epochs``. ``max_time`` (Lightning's: training stops at the first step
    after it, then the run is evaluated as usual) also takes a mapping from the config,
    ``{hours: 4}``, besides Lightning's ``"DD:HH:MM:SS"``.

    Checkpoints are written atomically (``checkpoints.AtomicCheckpointIO``) unless ``plugins``
    brings another CheckpointIO. Lightning's progress bar redraws on every batch, a cost that shows
    with small models; left to its default, the bar here redraws every ``log_every_n_steps``
    batches.

    Without a ``profiler`` none is run, as with Lightning's default, at less cost per hook
    (``NoProfiler``).

    The model summary (``callbacks.summary``) counts the FLOPs of the model's bound, which
    Lightning's leaves at 0; ``enable_model_summary=False`` leaves out every summary, one among
    ``callbacks`` too.

    Training steps are logged every ``log_every_n_steps`` steps, but at most every epoch's number
    of training batches (once fitting has counted them): with less data than the interval, every
    epoch still logs a step, where Lightning would warn and log none."""

    @property
    def log_every_n_steps(self) -> int:
        every = self._log_every_n_steps
        batches = getattr(getattr(self, "fit_loop", None), "max_batches", math.inf)
        return int(batches) if every and 0 < batches < every else every

    @log_every_n_steps.setter
    def log_every_n_steps(self, value: int) -> None:
        self._log_every_n_steps = value

    def _duration(self, value: Any) -> timedelta | None:
        """``max_time`` as a timedelta: Lightning's "DD:HH:MM:SS" or a mapping {hours: 4} (a
        DictConfig is not a dict, so Lightning would not read it)."""
        try:
            if value is None or isinstance(value, timedelta):
                return value
            if isinstance(value, str):
                days, hours, minutes, seconds = (int(part) for part in value.split(":"))
                return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            if isinstance(value, Mapping):
                parts = {str(k): float(v) for k, v in value.items()}
                if all(math.isfinite(number) for number in parts.values()):  # inf: no duration
                    return timedelta(**parts)
        except (TypeError, ValueError, OverflowError):  # OverflowError: {days: 1e12}
            pass
        fail(self, "max_time", value, "expected a duration 'DD:HH:MM:SS' or a mapping of days, "
             "hours, minutes, seconds to numbers, e.g. {hours: 4}")

    def _check_accelerator(self, accelerator: Any) -> None:
        """Refuse an accelerator this machine does not have (``trainer=gpu`` without CUDA,
        ``trainer=mps`` off Apple silicon), naming the ones it has."""
        kinds = {"gpu": ("cuda", "mps")}.get(accelerator, (accelerator,))
        if not isinstance(accelerator, str) or not all(k in AcceleratorRegistry for k in kinds):
            return  # auto, or an Accelerator object: Lightning's to judge
        if any(AcceleratorRegistry[k]["accelerator"].is_available() for k in kinds):
            return
        have = sorted(name for name in AcceleratorRegistry.available_accelerators()
                      if AcceleratorRegistry[name]["accelerator"].is_available())
        fail(self, "accelerator", accelerator,
             f"this machine has no {accelerator} device; it has: {', '.join(have)} (trainer=cpu, "
             "or trainer.accelerator=auto)")

    def _check_half_precision(self, precision: Any, accelerator: Any) -> None:
        """float16 autocast (16-mixed) runs only on a GPU: on the CPU Lightning trains in
        bf16-mixed instead, with a warning among its others. Refuse it there, naming both."""
        if str(precision) not in ("16", "16-mixed"):
            return
        if accelerator == "cpu" or (accelerator == "auto" and not (
                torch.cuda.is_available() or torch.backends.mps.is_available())):
            fail(self, "precision", precision, "16-mixed is float16 autocast, which runs on a "
                 "GPU only (on the CPU Lightning would train in bf16-mixed instead); on the CPU "
                 "choose bf16-mixed or 32-true, or train on a GPU (trainer=gpu)")

    @checked
    def __init__(
        self,
        *,
        max_samples: Annotated[float, Range(ge=1)] | None = None,
        max_epochs: Annotated[int, Range(ge=1)] | Literal[-1] | None = None,
        max_time: Any = None,
        callbacks: list[Any] | None = None,
        plugins: Any = None,
        accumulate_grad_batches: PositiveInt = 1,
        gradient_clip_val: PositiveFloat | None = None,
        val_check_interval: PositiveInt | Annotated[float, Range(gt=0, le=1)] | None = None,
        check_val_every_n_epoch: PositiveInt | None = 1,
        limit_train_batches: BatchLimit | None = None,
        limit_val_batches: BatchLimit | None = None,
        limit_test_batches: BatchLimit | None = None,
        limit_predict_batches: BatchLimit | None = None,
        overfit_batches: BatchLimit | None = None,
        **kwargs: Any,
    ) -> None:
        precision = kwargs.get("precision")  # Lightning's to check, but for float64
        # Lightning accepts a negative accumulation (it divides the loss by it: every step
        # climbs the loss) and a clip value <= 0 (ignored without a word); float64 it accepts,
        # but the model's densities are computed in float32 (``posteriors.Encoder``).
        if str(precision) in ("64", "64-true", "double"):
            fail(self, "precision", precision, "32-true (the default), bf16-mixed or 16-mixed "
                 "(GPU): the model's densities are float32, not float64")
        # Half-precision weights: the densities' float32 inputs would meet half weights.
        if str(precision) in ("16-true", "bf16-true"):
            fail(self, "precision", precision, "32-true (the default), bf16-mixed or 16-mixed "
                 "(GPU): the model keeps float32 weights and computes its densities in "
                 "float32, with half-precision products under autocast (the -mixed settings)")
        # Lightning takes a validation interval of 0 (batches, or a fraction 0.0) and validation
        # every 0 epochs, and divides by them at the first step: a ZeroDivisionError traceback.
        kwargs.update(accumulate_grad_batches=accumulate_grad_batches,
                      gradient_clip_val=gradient_clip_val, val_check_interval=val_check_interval,
                      check_val_every_n_epoch=check_val_every_n_epoch)
        # Checked here, so that a wrong one is named as a key (Lightning's words began
        # "trainer: You have passed invalid value 1.5"); None: Lightning's default.
        limits = {"limit_train_batches": limit_train_batches,
                  "limit_val_batches": limit_val_batches, "limit_test_batches": limit_test_batches,
                  "limit_predict_batches": limit_predict_batches,
                  "overfit_batches": overfit_batches}
        kwargs.update({name: value for name, value in limits.items() if value is not None})
        self._check_accelerator(kwargs.get("accelerator", "auto"))
        self._check_half_precision(precision, kwargs.get("accelerator", "auto"))
        max_time = self._duration(max_time)
        callbacks = list(callbacks or [])
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins] * bool(plugins)
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        if max_samples is not None:
            max_epochs = -1
            callbacks.append(SampleBudget(max_samples))
        if kwargs.get("enable_progress_bar", True) is False:
            # As with the summaries below: the bar off leaves out one from callbacks=rich too
            # (debug=fast_dev_run with callbacks=rich was refused with Lightning's words).
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        elif not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(Bar(refresh_rate=max(1, kwargs.get("log_every_n_steps") or 1)))
        # Lightning's choice of summary, with the bound's FLOPs counted (its own prints 0);
        # enable_model_summary=false leaves out every summary, one from callbacks=rich too.
        summaries = [c for c in callbacks if isinstance(c, ModelSummary)]
        if kwargs.pop("enable_model_summary", True) is False:
            callbacks = [c for c in callbacks if c not in summaries]
        elif not summaries:
            callbacks.append(summary.RichModelSummary() if _RICH_AVAILABLE
                             else summary.ModelSummary())
        if kwargs.get("profiler") is None:
            kwargs["profiler"] = NoProfiler()
        super().__init__(max_epochs=max_epochs, max_time=max_time, callbacks=callbacks,
                         plugins=plugins, enable_model_summary=False, **kwargs)
        self._check_nodes()

    def _check_nodes(self) -> None:
        """Several nodes need a cluster that starts a process on each (SLURM, torchrun) or, with
        Lightning's own environment, NODE_RANK and MASTER_ADDR set on every node: without them
        rank 0 waited for the other nodes' processes forever (a run that never started)."""
        environment = getattr(self.strategy, "cluster_environment", None)
        if self.num_nodes <= 1 or not isinstance(environment, LightningEnvironment):
            return
        unset = [name for name in ("NODE_RANK", "MASTER_ADDR") if name not in os.environ]
        if unset:
            fail(self, "num_nodes", self.num_nodes,
                 f"expected 1 here: no cluster environment was found (not SLURM, not "
                 f"torchrun) and {' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not "
                 "set, so the run would wait for the other nodes forever. Start one process per "
                 "node with "
                 "NODE_RANK=<node> MASTER_ADDR=<node 0's address> MASTER_PORT=<port> set "
                 "(Lightning's general cluster), or srun under SLURM")
