"""The model's optimizers: its own over its parameters with the learning-rate schedule, and one
per update an objective takes on parameters of its own (FactorVAE's discriminator); the
settings checked before training on a stand-in parameter; a resumed run's optimizer settings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel

from vae_lightning.errors import ConfigError
from vae_lightning.graphs import graph_problems

log = logging.getLogger(__name__)


def check(model: L.LightningModule) -> None:
    """Refuse, before training, optimizer settings that cannot train: the optimizer's own
    argument checks and the schedule's, on one stand-in parameter (the objective's own
    optimizers' too); a learning rate of 0; and with ``cuda_graph``, an optimizer the
    graphed step cannot use."""
    for update in model.auxiliary:
        update.optimizer([nn.Parameter(torch.zeros(1))])
    optimizer = stand_in(model)
    if optimizer.param_groups[0]["lr"] == 0:
        raise ValueError("its learning rate must be above 0: at lr=0 no parameter moves")
    if model.schedule is not None:
        torch.optim.lr_scheduler.LambdaLR(optimizer, model.schedule)
    if model.cuda_graph and (problems := graph_problems(model, optimizer)):
        raise ConfigError("model.cuda_graph=true cannot be used: " + "; ".join(problems)
                          + ".")

def stand_in(model: L.LightningModule) -> torch.optim.Optimizer:
    """The configured optimizer over one stand-in parameter: its settings, for checks."""
    return model.optimizer([nn.Parameter(torch.zeros(1))])

_FUSABLE: dict[tuple[type, str], bool] = {}

def fusable(factory: Any, device: torch.device | str) -> bool:
    """Whether the optimizer ``factory`` builds, asked for torch's fused update
    (``fused=True``), can take it on ``device``: torch has fused Adam(W) and SGD on the CPU and
    CUDA, but fused Adagrad on the CPU only. Tried once per optimizer type and device type, with
    one step of a one-element parameter."""
    device = torch.device(device)
    probe = nn.Parameter(torch.zeros(1, device=device))
    optimizer = factory([probe])
    key = (type(optimizer), device.type)
    if key not in _FUSABLE:
        probe.grad = torch.zeros_like(probe)
        try:
            optimizer.step()
            _FUSABLE[key] = True
        except RuntimeError:
            _FUSABLE[key] = False
    return _FUSABLE[key]

def clipped_in_mixed_precision(model: L.LightningModule) -> bool:
    """Whether Lightning clips the model's gradients (``trainer.gradient_clip_val``, or
    ``ManualClipping`` under manual optimization) under mixed precision (``trainer.precision``
    bf16-mixed or 16-mixed): it then refuses, at the first step, an optimizer that unscales the
    gradients inside its step, as a fused one does ("does not allow for gradient clipping")."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    trainer = model._trainer
    if trainer is None or not isinstance(trainer.precision_plugin, MixedPrecision):
        return False
    return bool(trainer.gradient_clip_val) or any(
        isinstance(callback, ManualClipping) for callback in trainer.callbacks)


def on_device(factory: Any, params: list[nn.Parameter],
              clipped: bool = False) -> torch.optim.Optimizer:
    """``factory(params)``; where it asks for the fused update and torch has none for it on the
    parameters' device (Adagrad on CUDA), or Lightning clips its gradients in mixed precision
    (``clipped``: ``clipped_in_mixed_precision``), the same optimizer with ``fused=False``:
    torch's default kernels, the same update to float rounding (said once in the log)."""
    optimizer = factory(params)
    device = params[0].device if params else torch.device("cpu")
    if optimizer.defaults.get("fused") and clipped:
        log.info("trainer.gradient_clip_val in mixed precision: Lightning clips the gradients "
                 "of an optimizer without the fused update only; taking %s's default (foreach) "
                 "update.", type(optimizer).__name__)
        optimizer = factory(params, fused=False)
    elif optimizer.defaults.get("fused") and not fusable(factory, device):
        log.info("torch has no fused %s update on %s: taking its default (foreach) update.",
                 type(optimizer).__name__, device.type)
        optimizer = factory(params, fused=False)
    return optimizer

def configure(model: L.LightningModule) -> Any:
    """The model's optimizer over its parameters (the objective's own excepted), with the
    schedule; then one optimizer per auxiliary update of the objective, over its
    parameters. Each takes the fused update where torch has it on the device (``on_device``)."""
    own = {id(p) for update in model.auxiliary for p in update.parameters()}
    optimizer = on_device(model.optimizer, [p for p in model.parameters() if id(p) not in own],
                          clipped_in_mixed_precision(model))
    configured: dict[str, Any] = {"optimizer": optimizer}
    if model.schedule is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, model.schedule)
        configured["lr_scheduler"] = {"scheduler": scheduler, "interval": "epoch"}
    if not model.auxiliary:
        return configured if model.schedule is not None else optimizer
    return [configured, *({"optimizer": on_device(update.optimizer, list(update.parameters()))}
                          for update in model.auxiliary)]

def apply_settings(model: L.LightningModule, checkpoint: dict[str, Any]) -> None:
    """A resumed run goes on with this run's optimizer hyperparameters (``lr``,
    ``weight_decay``, ...: e.g. a lower learning rate after a divergence) and the saved
    optimizer state (moments, step counts); under a schedule, the new lr is its base and the
    schedule's factor stays. Lightning loads the states after this hook."""
    states = checkpoint.get("optimizer_states") or []
    if not states:
        return
    current = stand_in(model).param_groups[0]
    trainer = model._trainer
    device = trainer.strategy.root_device if trainer is not None else model.device
    if current.get("fused") and (not fusable(model.optimizer, device)
                                 or clipped_in_mixed_precision(model)):
        current = {**current, "fused": False}  # a CPU run resumed on CUDA (see on_device)
    for group in states[0]["param_groups"]:
        for key, value in current.items():
            if key == "lr" and "initial_lr" in group:  # under a schedule: its base lr
                key, value = "initial_lr", value
            if key != "params" and key in group and group[key] != value:
                log.info("Resuming with optimizer %s=%r (the checkpoint's: %r).",
                         key, value, group[key])
                if key == "initial_lr":  # the schedule's factor stays as it was
                    group["lr"] = value * group["lr"] / group["initial_lr"]
                    for scheduler in checkpoint.get("lr_schedulers") or []:
                        scheduler["base_lrs"] = [value] * len(scheduler.get("base_lrs", []))
                group[key] = value

def is_last_batch(model: L.LightningModule, batch_idx: int) -> bool:
    """Whether training batch ``batch_idx`` is its epoch's last, as Lightning decides it."""
    trainer = model.trainer
    return (trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            or batch_idx + 1 >= trainer.num_training_batches)


def accumulation(model: L.LightningModule, index: int, last: bool) -> tuple[bool, bool]:
    """For the epoch's minibatch ``index`` (from 0; ``last``: the epoch's last) under manual
    optimization: whether its gradient starts a window of ``model.accumulate`` minibatches
    (zeroed first) and whether the model's optimizer steps after it (the window's end, or the
    epoch's end), Lightning's rule for automatic accumulation (windows counted within the
    epoch)."""
    every = model.accumulate
    return index % every == 0, (index + 1) % every == 0 or last


def step_epoch_schedules(model: L.LightningModule, epoch: int) -> None:
    """Under manual optimization (``steps_per_batch`` > 1, a CUDA graph, an objective's own
    updates) Lightning steps no learning-rate scheduler: step the epoch-interval ones here at
    the end of ``epoch``'s last batch, where Lightning steps them under automatic optimization
    (after the batch's training step, before its batch-end hooks and the epoch's validation and
    checkpoints), so that both train with the same learning rates and save the same state."""
    for config in model.trainer.lr_scheduler_configs:
        if config.interval == "epoch" and (epoch + 1) % config.frequency == 0:
            model.lr_scheduler_step(config.scheduler, None)


class ManualClipping(L.Callback):
    """``trainer.gradient_clip_val`` (and ``gradient_clip_algorithm``) for a model that
    optimizes by hand, where Lightning refuses to clip: the model's gradients are clipped
    before each of its optimizer's steps, through the module's ``configure_gradient_clipping``
    as Lightning does under automatic optimization, so a run clips the same way, bit for bit,
    with one step per batch or ``data.steps_per_batch`` > 1. An objective's own updates (a
    discriminator's) are not clipped: Lightning's automatic clipping would not see them either.
    ``train.py`` takes the setting from the Trainer's arguments for it."""

    def __init__(self, value: float, algorithm: str | None) -> None:
        self.value, self.algorithm = value, algorithm

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        pl_module.configure_gradient_clipping(optimizer, self.value, self.algorithm)


def check_manual(model: L.LightningModule, trainer: Any) -> None:
    """Refuse, before training, gradient accumulation (``trainer.accumulate_grad_batches``)
    where manual steps cannot accumulate: a captured CUDA-graph step writes each minibatch's
    gradient over the last, and an objective's own update after each minibatch would see a
    half-accumulated model; and float16 mixed precision with an objective's own updates."""
    every = trainer.get("accumulate_grad_batches") or 1
    if every > 1 and (model.cuda_graph or model.auxiliary):
        why = ("model.cuda_graph=true (a captured step overwrites the gradient)"
               if model.cuda_graph else "an objective with updates of its own (FactorVAE)")
        raise ConfigError(f"trainer.accumulate_grad_batches={every} cannot be used with {why}: "
                          "set it to 1, or raise data.batch_size instead.")
    precision = str(trainer.get("precision"))
    if model.auxiliary and precision in ("16", "16-mixed"):
        # Its optimizer steps outside Lightning's precision plugin, on gradients multiplied by
        # the loss scale (which the scaler doubles and halves) with no overflow check.
        raise ConfigError(f"trainer.precision={precision} cannot be used with an objective with "
                          "updates of its own (FactorVAE): its optimizer would step on gradients "
                          "scaled by the mixed-precision loss scale, unscaled and unchecked for "
                          "overflow. Use trainer.precision=bf16-mixed, or 32.")


def auxiliary_backward(model: L.LightningModule, loss: Tensor,
                       parameters: Iterable[nn.Parameter]) -> None:
    """The gradients of an objective's own update (``Auxiliary``: FactorVAE's discriminator) on
    its ``parameters``, averaged over the ranks under DDP as the model's are. Lightning's
    ``manual_backward`` re-arms DDP's reducer for every parameter of the model, of which this
    loss reaches the objective's own only: the reduction never finished and the next step
    stopped with "parameters that were not used in producing the loss". So under DDP the loss
    is differentiated by autograd alone and the gradients are averaged here, in one all-reduce
    (mean over ranks, as DDP's own); without DDP ``manual_backward`` as before. Whether the model
    is wrapped in DDP decides, as it decides Lightning's re-arming, not the number of ranks:
    ``trainer=ddp trainer.devices=1`` wraps it too, one rank, and stopped the same way."""
    if not isinstance(model.trainer.strategy.model, DistributedDataParallel):
        model.manual_backward(loss)
        return
    loss.backward()
    parameters = list(parameters)
    for p in parameters:  # every rank reduces the same tensors, in the same order
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in parameters]
    flat = model.trainer.strategy.reduce(_flatten_dense_tensors(grads), reduce_op="mean")
    for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(mean)


def manual_settings(model: L.LightningModule, trainer: Any) -> tuple[dict[str, Any], list[Any]]:
    """The Trainer arguments and extra callbacks that give ``model`` the configured gradient
    clipping and accumulation (``trainer`` the Trainer's config): unchanged under automatic
    optimization, where Lightning applies them; else they move to the model's own steps
    (``ManualClipping``, ``model.accumulate``), Lightning refusing them there."""
    if model.automatic_optimization:
        return {}, []
    overrides: dict[str, Any] = {}
    callbacks: list[Any] = []
    if (every := trainer.get("accumulate_grad_batches") or 1) > 1:
        model.accumulate, overrides["accumulate_grad_batches"] = every, 1
    if (value := trainer.get("gradient_clip_val")) is not None:
        callbacks.append(ManualClipping(value, trainer.get("gradient_clip_algorithm")))
        overrides.update(gradient_clip_val=None, gradient_clip_algorithm=None)
    return overrides, callbacks
