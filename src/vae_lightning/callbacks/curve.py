"""Figure 2's curve during training: the bound on the training and test data at log-spaced counts
of training samples seen, and the training length in samples seen.

- ``BoundCurve`` evaluates the ELBO (the model's own ``bound``, as the validation loop does) on
  whole splits after the first training step whose samples seen reach the next point of the
  schedule 10^(j / points_per_decade) >= ``start``, and once more at the end of training. It logs
  ``curve/<split>_elbo`` and ``curve/samples_seen`` to the loggers and rewrites
  ``<dirpath>/curve.json`` after each evaluation, so a run stopped early keeps its curve.
- ``SampleBudget`` stops training once ``max_samples`` training samples (all ranks) were seen:
  the x-axis of Fig. 2, set with ``trainer.max_samples``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import lightning as L
import torch

from vae_lightning import rundir
from vae_lightning.args import PositiveInt, Range, checked, fail
from vae_lightning.checkpoints import RunConfig
from vae_lightning.errors import DataError
from vae_lightning.files import atomic_write

log = logging.getLogger(__name__)


def split_elbo(model: L.LightningModule, datamodule: L.LightningDataModule, split: str,
               batch_size: int, points: torch.Tensor | None = None,
               stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
    """The ELBO of each data point of ``split`` (of the points of index ``points``; given its
    label, for a conditional model), ``batch_size`` points at a time (``evaluation_batches``)
    on the model's device; None where ``stop()`` turns true before a batch."""
    elbos = []
    for xs, ys in datamodule.evaluation_batches(split, batch_size, model.device, points=points):
        if stop is not None and stop():
            return None
        elbos.append(model.batch_bound(xs, ys).elbo)
    return torch.cat(elbos)

class BoundCurve(L.Callback):
    """Evaluate the ELBO (nats per data point) on ``splits`` at log-spaced samples seen: on
    each whole split, or on ``max_points`` of its points for a large one (drawn once from a
    fixed seed; ``curve.json``'s ``<split>_size`` says how many).

    ``curve.json`` holds the data set's name, the latent size, the training method
    (``aevb`` or ``wake_sleep``), the number of points of each split, the run's config and
    ``points``: ``[{"samples_seen": n, "<split>/elbo": value, ...}, ...]``. Each evaluation draws
    its z from a fixed seed in a forked random stream: training's stream is left untouched.
    Rank 0 evaluates and writes; the other ranks go on training.
    """

    @checked
    def __init__(self, dirpath: str | None = None, points_per_decade: PositiveInt = 5,
                 start: Annotated[float, Range(ge=1)] = 1e4,
                 splits: Sequence[Literal["train", "val", "test"]] = ("train", "test"),
                 batch_size: PositiveInt = 1000, max_points: PositiveInt | None = None) -> None:
        if not splits:
            fail(self, "splits", list(splits), "expected at least one of train, val, test")
        self.dirpath, self.points_per_decade = dirpath, points_per_decade
        self.splits, self.batch_size = tuple(splits), batch_size
        self.max_points = max_points
        self.points: list[dict[str, float]] = []
        self._next = math.ceil(points_per_decade * math.log10(start))
        self._sizes: dict[str, int] = {}  # the points of each split evaluated
        self._resumed_sizes: dict[str, int] = {}  # those of the run resumed (its checkpoint's)

    @property
    def sizes(self) -> dict[str, int]:
        """The points of each split evaluated (curve.json's ``<split>_size``), by this run or,
        before its first point, by the run it resumes."""
        return {**self._resumed_sizes, **self._sizes}

    def threshold(self, j: int) -> float:
        return 10 ** (j / self.points_per_decade)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        seen = pl_module.samples_seen
        if seen < self.threshold(self._next):
            return
        due = self._next
        while self.threshold(self._next) <= seen:
            self._next += 1
        if not self.evaluate(trainer, pl_module):
            self._next = due  # left out: a resumed run makes it at its first batch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.points or self.points[-1]["samples_seen"] != pl_module.samples_seen:
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Append the bound of each split at the current samples seen; log it; write the file.
        Not after a SIGTERM (nor past one received during the pass, between two batches): the
        run is to end, and a pass over whole splits can outlast a scheduler's grace period; the
        point is left out (False)."""
        if not trainer.is_global_zero:
            return True
        stop = lambda: trainer.received_sigterm  # noqa: E731
        if stop():
            log.info("SIGTERM received: the curve point at %d samples seen is left out.",
                     pl_module.samples_seen)
            return False
        training = pl_module.training
        pl_module.eval()
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            point = {"samples_seen": pl_module.samples_seen}
            for split in self.splits:
                dm = self._split(trainer, split)
                elbo = split_elbo(pl_module, dm, split, self.batch_size,
                                  self._points(len(dm.splits[split][0])), stop)
                if elbo is None:
                    break
                self._sizes[split] = len(elbo)
                point[f"{split}/elbo"] = elbo.double().mean().item()
        pl_module.train(training)
        if stop():
            log.info("SIGTERM received during the curve's pass: the point at %d samples seen "
                     "is left out.", pl_module.samples_seen)
            return False
        self.points.append(point)
        metrics = {f"curve/{key.replace('/', '_')}": value for key, value in point.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._write(trainer, pl_module)
        return True

    def _points(self, size: int) -> torch.Tensor | None:
        """Which points of a split of ``size`` are evaluated: all, or ``max_points`` of them
        drawn once without replacement (the same at every point of the curve and in every run,
        drawn from a fixed seed apart from training's stream), in the split's order."""
        if self.max_points is None or size <= self.max_points:
            return None
        generator = torch.Generator().manual_seed(0)
        return torch.randperm(size, generator=generator)[:self.max_points].sort().values

    def _split(self, trainer: L.Trainer, split: str) -> L.LightningDataModule:
        """The data module, with ``split`` loaded."""
        dm = trainer.datamodule
        if split not in self._sizes:
            dm.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return dm

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        payload = {
            "data": getattr(trainer.datamodule, "name", None),
            "latent": pl_module.latent,
            "method": pl_module.method,
            **{f"{split}_size": self._sizes[split] for split in self.splits},
            "config": RunConfig.of(trainer),
            "points": self.points,
        }
        path = rundir.path(self.dirpath or trainer.default_root_dir, "curve")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as file:  # a kill mid-write leaves the previous curve
            file.write(json.dumps(payload, indent=1) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points, "next_samples": self.threshold(self._next),
                "sizes": self.sizes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the curve: the next point is the first of this schedule at or after the saved
        one (the same point unless ``points_per_decade`` changed)."""
        self.points = state_dict["points"]
        self._resumed_sizes = dict(state_dict.get("sizes") or {})  # none in an older checkpoint
        self._next = math.ceil(self.points_per_decade * math.log10(state_dict["next_samples"])
                               - 1e-9)


class SampleBudget(L.Callback):
    """Stop training after the step at which ``max_samples`` training samples were seen."""

    @checked
    def __init__(self, max_samples: Annotated[float, Range(ge=1)]) -> None:
        self.max_samples = int(max_samples)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer) -> None:
        """Checked at every step, also within a batch of several (``steps_per_batch``)."""
        if pl_module.samples_seen >= self.max_samples:
            trainer.should_stop = True


class InitialBound(L.Callback):
    """The ELBO (nats per data point) on the validation split of the model before its first
    optimizer step (on the training split when there is no validation split): the line a
    diverged run ends below (``vae_lightning.sweeps``). Kept in the checkpoints, so a resumed run
    keeps its first value. Drawn from a fixed seed in a forked random stream: training's stream
    is left untouched."""

    def __init__(self, batch_size: int = 1000) -> None:
        self.value: float | None = None
        self.split = "val"
        self.batch_size = batch_size

    @torch.no_grad()
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.value is not None or trainer.global_step > 0:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "evaluation_data"):
            return
        dm.setup("validate")
        if not len(dm.splits["val"][0]):  # val_size=0
            self.split = "train"
            dm.setup("fit")
        device = pl_module.device
        training = pl_module.training
        pl_module.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            elbo = split_elbo(pl_module, dm, self.split, self.batch_size)
        pl_module.train(training)
        self.value = elbo.double().mean().item()
        if not math.isfinite(self.value):
            raise DataError(unscorable(elbo, self.split, dm))

    # Methods of the class, not of unscorable below (where they were: no state was saved, and a
    # resumed run had no b0, initial/<split>_elbo null and no divergence check).
    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "split": self.split}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.value = state_dict.get("value")
        self.split = state_dict.get("split", "val")


def unscorable(elbo: torch.Tensor, split: str, datamodule: Any) -> str:
    """The paragraph refusing a run whose untrained model's bound ``elbo`` (per point of
    ``split``) is not finite: no step can mend a point the model cannot score as it starts (a
    validation point with a count of 2^24 read by an MLP encoder, a float feature of 1e20), and
    the run trained its whole length to end 'diverged', with 'lower model.optimizer.lr'."""
    bad = torch.nonzero(~torch.isfinite(elbo)).flatten().tolist()
    rows = datamodule.evaluation_rows(split) if hasattr(datamodule, "evaluation_rows") else None
    where = (f" (row {int(rows[bad[0]])} of what the split was read from)"
             if rows is not None and len(rows) > bad[0] else "")
    return (f"The untrained model's bound on the {split} split is not finite "
            f"({elbo[bad[0]].item()} nats at its point {bad[0]}{where}; {len(bad)} of its "
            f"{len(elbo)} points are such), before any step: the model cannot score these data "
            "as it starts, and no update was made, so the step size is not the cause (training "
            "would end with the run diverged). Look at the data's values for values far out of "
            "scale (counts read by an MLP encoder: model.encoder.net.log_input=true reads "
            "log(1 + x); real-valued feature vectors: standardise them) and at the model's "
            "settings. Nothing was trained.")
