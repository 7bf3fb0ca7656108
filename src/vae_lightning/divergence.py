"""A loss that becomes non-finite stops the run with what was kept and how to go on."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from vae_lightning.errors import NonFiniteLossError
from vae_lightning.parts import Bound


def largest_parameter(model: torch.nn.Module) -> float:
    """The largest parameter of ``model`` in absolute value (0 for a model without any)."""
    return max((p.detach().abs().max().item() for p in model.parameters() if p.numel()),
               default=0.0)


def refuse_nonfinite(values: torch.Tensor, what: str, model: torch.nn.Module) -> None:
    """Refuse ``values`` (a command's output: an estimate, samples, posterior locations) that
    hold NaN or infinite values, before they are written: finite weights can still overflow
    (a run that blew up between checks, a tampered file), and a file of NaN read as a result
    is worse than none. Exit code 3, as a non-finite loss in training."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise NonFiniteLossError(
            f"{bad} of the {values.numel()} values of {what} are not finite (NaN or infinite): "
            f"the model's weights overflow (its largest parameter is "
            f"{largest_parameter(model):.3g} in absolute value); nothing was written. Use a "
            "checkpoint taken while training was sound (a best-*.ckpt).")


def stop(model: L.LightningModule, bound: Bound, since: int | None = -1) -> None:
    """Save the state before this step (its update is not applied) and stop the run, naming
    a state to go on from: the best checkpoint by the validation bound, taken while training
    was sound (the state just before a divergence may already hold huge parameters). With
    graphed steps (``since`` not -1) the flag is read every few steps: the bad step lies
    after ``since``, and every update from it on was skipped."""
    terms = {"reconstruction term E_q[log p(x|z)]": bound.recon, "KL term": bound.kl}
    bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
    where = model.trainer.checkpoint_callback
    directory = Path(where.dirpath if where else model.trainer.default_root_dir)
    path = directory / f"nonfinite-step{model.global_step}.ckpt"
    model.trainer.save_checkpoint(path)
    largest = largest_parameter(model)
    best = where.best_model_path if where is not None else ""
    advice = (f"To go on, resume from the best checkpoint, {best}, with a lower "
              "model.optimizer.lr (optimizer settings given on resume apply)"
              if best else "Start again with a lower model.optimizer.lr")
    if model.global_step == 0 and since == -1:
        # No update has been made: the step size cannot be the cause, the data or the
        # model's initial state are (a value out of float32's range once squared, 1e30 say).
        advice = ("No update had been made, so the step size is not the cause: look at the "
                  "data's values (the images, data.condition's vectors) for values far out of "
                  "scale, and at the model's settings")
    if since == -1:
        when = f"at step {model.global_step} (epoch {model.current_epoch}) in the " + (
            " and the ".join(bad) or "loss")
        what = "The state before this step"
    else:
        when = (f"between step {max(since, 0)} and step {model.global_step}" if since is not None
                else f"in epoch {model.current_epoch}, by step {model.global_step}")
        what = ("Every update from the bad step on was skipped on the device, so the state "
                "before that step")
    broken = sum(int((~torch.isfinite(p.detach())).sum()) for p in model.parameters())
    if broken and since == -1:
        # The loss is checked every step, the gradients are not (that would cost a pass over
        # them a step): an update from non-finite gradients of a finite loss (an objective's
        # 0 x inf) shows as this step's non-finite loss, from parameters already broken.
        raise NonFiniteLossError(
            f"The loss became non-finite {when}: {broken} of the model's parameters already "
            "were not finite, so an earlier update was made from gradients that were not "
            f"finite while its loss was. That state is saved to {path} for inspection only; "
            + (f"to go on, resume from the best checkpoint, {best}" if best else
               "start again") + ", and look for a term of the objective whose gradient can be "
            "infinite (e.g. a log or a square root at 0), or lower model.optimizer.lr.")
    raise NonFiniteLossError(
        f"The loss became non-finite {when}. {what} is saved to {path} (its largest "
        f"parameter is {largest:.3g} in absolute value). {advice}; a Gaussian likelihood's "
        "larger min_var also steadies training."
    )
