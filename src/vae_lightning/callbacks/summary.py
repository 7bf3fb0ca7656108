"""The model summary at the start of training, with its FLOPs counted.

Lightning counts a model's FLOPs only by running its ``example_input_array`` through
``forward``; a VAE has no one forward (its objective evaluates a bound), so Lightning's summary
printed 0 FLOPs for every layer and in total. These summaries count, with torch's
``FlopCounterMode`` (matrix products and convolutions), the floating-point operations of the
model's bound (``VAE.bound``, the objective's evaluation bound: the ELBO with its L draws, also
for objectives that train on k importance samples) on one data point: an all-zero input of the
data's shape with the first training label (what a conditional model is given), in eval mode
and without gradients, as Lightning counts its example. The operations do not depend on the
values, so the count is that of any data point's bound: for the ELBO, the forward pass of a
training step per data point (its backward costs about twice as much again). The global random
generators are forked around the count: training draws the same numbers as without it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.utilities.model_summary import ModelSummary as Summary


def count_flops(summary: Summary, trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """Run ``module.bound`` on one data point under ``summary``'s FLOP counter, so that its
    total and per-layer counts are the bound's. Nothing is counted without a data module that
    holds a training split (a summary outside ``fit``)."""
    splits = getattr(trainer.datamodule, "splits", {})
    counter = getattr(summary, "_flop_counter", None)
    if "train" not in splits or counter is None or not hasattr(module, "bound"):
        return
    x = torch.zeros(1, *trainer.datamodule.shape, device=module.device)
    y = trainer.datamodule.evaluation_labels("train")[:1].to(module.device)  # one label moved
    modes = {m: m.training for m in module.modules()}
    # The count needs no gradients, and torch's module tracker asserts that a layer's output has
    # a gradient function whenever its input requires a gradient: a parameter fed as a layer's
    # input (the VampPrior's pseudo-inputs, through the encoder) does, even under no_grad.
    trained = [p for p in module.parameters() if p.requires_grad]
    cuda = [module.device] if module.device.type == "cuda" else []
    try:
        module.eval()
        for p in trained:
            p.requires_grad_(False)
        # Name the layers from the model down (VAE.encoder...), as Lightning's table looks
        # them up; torch would name them from the first one called (a private method: without
        # it only the per-layer column stays empty).
        tracker = getattr(counter, "mod_tracker", None)
        if hasattr(tracker, "_get_mod_name"):
            tracker._get_mod_name(module)
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), \
                trainer.precision_plugin.forward_context(), counter:
            module.batch_bound(x, y)
    finally:
        for m, training in modes.items():
            m.training = training
        for p in trained:
            p.requires_grad_(True)


class _Counted:
    """A Lightning summary callback whose summary holds the bound's FLOPs (``count_flops``)."""

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        summary = super()._summary(trainer, pl_module)  # type: ignore[misc]
        count_flops(summary, trainer, pl_module)
        return summary


class ModelSummary(_Counted, callbacks.ModelSummary):
    """Lightning's model summary, its FLOPs those of the bound on one data point."""


class RichModelSummary(_Counted, callbacks.RichModelSummary):
    """Lightning's rich model summary, its FLOPs those of the bound on one data point."""
