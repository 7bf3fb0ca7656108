"""A loss that becomes non-finite stops the run with what was kept and how to go on."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from vae_lightning.errors import NonFiniteLossError
from vae_lightning.parts import Bound


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
    largest = max(p.detach().abs().max().item() for p in model.parameters())
    best = where.best_model_path if where is not None else ""
    advice = (f"To go on, resume from the best checkpoint, {best}, with a lower "
              "model.optimizer.lr (optimizer settings given on resume apply)"
              if best else "Start again with a lower model.optimizer.lr")
    if since == -1:
        when = f"at step {model.global_step} (epoch {model.current_epoch}) in the " + (
            " and the ".join(bad) or "loss")
        what = "The state before this step"
    else:
        when = (f"between step {max(since, 0)} and step {model.global_step}" if since is not None
                else f"in epoch {model.current_epoch}, by step {model.global_step}")
        what = ("Every update from the bad step on was skipped on the device, so the state "
                "before that step")
    raise NonFiniteLossError(
        f"The loss became non-finite {when}. {what} is saved to {path} (its largest "
        f"parameter is {largest:.3g} in absolute value). {advice}; a Gaussian likelihood's "
        "larger min_var also steadies training."
    )
