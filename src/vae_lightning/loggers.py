"""Loggers: Lightning's CSV logger, made to keep a resumed run's history; its TensorBoard logger,
with the run's best bound as ``hp_metric``; its MLflow logger, taking the run's tags as a list.
TensorBoard and MLflow are imported only when their logger is used."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import MLFlowLogger as _MLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from vae_lightning.args import checked
from vae_lightning.errors import ConfigError
from vae_lightning.files import atomic_write, writable_directory

log = logging.getLogger(__name__)

# The environment variable that names MLflow's tracking server (MLflow's name).
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
# MLflow's error code for a run id its store does not hold (MlflowException.error_code).
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
# The metric TensorBoard's HPARAMS tab sets against each run's hyperparameters (Lightning's name).
HP_METRIC = "hp_metric"


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv`` when it starts; this one keeps it and
    appends, with the columns it already has."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def drop_after(self, step: int, keep: bool = False) -> Path | None:
        """Forget the rows logged after ``step``: those of a killed run's steps past the
        checkpoint it resumes from, which the resumed run logs again. ``keep``: the run resumes
        from an earlier checkpoint than its last (train.py kept that last.ckpt), so the rows
        after ``step`` are another branch's history, not logged again: they are first written
        to ``metrics-after-step<step>.csv`` beside (``-2``, ... where taken), which is
        returned."""
        if not self._fs.isfile(self.metrics_file_path):
            return None
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        kept = [row for row in rows if not row.get("step") or int(row["step"]) <= step]
        saved = None
        if keep and len(kept) < len(rows):
            folder, number = Path(self.metrics_file_path).parent, 1
            saved = folder / f"metrics-after-step{step}.csv"
            while saved.exists():
                number += 1
                saved = folder / f"metrics-after-step{step}-{number}.csv"
            with atomic_write(saved, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(row for row in rows
                                 if row.get("step") and int(row["step"]) > step)
        if len(kept) < len(rows):
            with atomic_write(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
        return saved


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` a resumed run appends to: the
    epochs before the checkpoint stay, the rows after it (a killed run's last steps) are dropped
    when training resumes (``resume.ResumeState``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    # Set by train.py where the run resumes from an earlier checkpoint than its last.ckpt (which
    # it kept): the rows this resume drops are another branch's, kept in a file of their own.
    keep_dropped = False

    def resume_at(self, step: int) -> None:
        saved = self.experiment.drop_after(step, keep=self.keep_dropped)
        if saved is not None:
            log.info("The metrics logged after step %d (the branch that last.ckpt reached) are "
                     "kept in %s.", step, saved)


class TensorBoardLogger(_TensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` whose ``hp_metric`` is the run's best
    monitored value (``val/elbo``, the best checkpoint's), not Lightning's placeholder -1.

    The hyperparameters and ``hp_metric`` (at the step the best checkpoint was saved) are written
    together when training ends, so that the HPARAMS tab compares runs by their best bound; a run
    without a monitored checkpoint (no validation split) gets no ``hp_metric`` and no HPARAMS
    entry, its hyperparameters still in ``hparams.yaml``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, default_hp_metric=False, **kwargs)
        self._best: tuple[float, int | None] | None = None  # (value, step) of the best
        self._written: tuple[float, int | None] | None = None
        self._step: int | None = None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._step = step
        super().log_metrics(metrics, step)

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """Training goes on after ``step`` (-1: a fresh run): the events this directory holds
        from later steps (a killed run's steps past the checkpoint resumed from, or all of a
        run stopped here before its first checkpoint) are hidden from TensorBoard, as the
        writer's ``purge_step`` does: the new writer marks the restart at ``step + 1``."""
        self._kwargs["purge_step"] = step + 1
        if self._experiment is not None:  # opened without it: the next write opens it anew
            self._experiment.close()
            self._experiment = None

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        score = checkpoint_callback.best_model_score
        if checkpoint_callback.monitor and score is not None:
            value = float(score)
            if self._best is None or value != self._best[0]:
                self._best = (value, self._step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._best is not None and self._best != self._written:
            value, step = self._best
            super().log_hyperparams(self.hparams, {HP_METRIC: value}, step)
            self._written = self._best
        super().finalize(status)


class MLFlowLogger(_MLFlowLogger):
    """``lightning.pytorch.loggers.MLFlowLogger`` with a local store by default, and the run's
    tags as a list of labels, as W&B takes them.

    Without ``tracking_uri`` the runs go to the store in the folder ``save_dir``: MLflow's
    default layout, ``mlflow.db`` (an SQLite database: metrics, parameters, tags; MLflow keeps
    its file store only behind MLFLOW_ALLOW_FILE_STORE) and ``mlartifacts/`` (the figures), which
    ``mlflow ui`` started in that folder shows; a folder that cannot be written is refused before
    training (``UnwritableError``). MLflow's tags are key-value pairs: each label
    becomes a tag of that name with the value "true" (found with ``tags.<label> = 'true'``)."""

    @checked
    def __init__(self, *args: Any, tags: Sequence[str] = (), tracking_uri: str | None = None,
                 save_dir: str | os.PathLike = "./", artifact_location: str | None = None,
                 **kwargs: Any) -> None:
        if tracking_uri is None:
            store = os.path.abspath(save_dir)
            writable_directory(Path(store), "logger.mlflow.save_dir")
            tracking_uri = f"sqlite:///{os.path.join(store, 'mlflow.db')}"
            artifact_location = artifact_location or os.path.join(store, "mlartifacts")
            os.makedirs(store, exist_ok=True)
        super().__init__(*args, tags={tag: "true" for tag in tags} or None,
                         tracking_uri=tracking_uri, save_dir=None,
                         artifact_location=artifact_location, **kwargs)

    @property
    def experiment(self) -> Any:
        """Lightning's MLflow client, without the process-wide MLFLOW_TRACKING_URI that
        ``mlflow.set_tracking_uri`` leaves behind, so that the next run in this process (a
        sweep's next job) reads its own configuration."""
        before = os.environ.get(TRACKING_URI_VARIABLE)
        try:
            try:
                return super().experiment
            except Exception as err:  # mlflow is imported only with this logger
                if self._run_id is None or getattr(err, "error_code", None) != NOT_FOUND:
                    raise
            # A resumed run's MLflow run (its id kept in the checkpoint) that this store does not
            # hold: the run moved to another machine, or another save_dir / tracking URI. A new
            # MLflow run, as W&B's resume="allow" starts one, rather than a traceback.
            log.warning("The MLflow run %s that this run logged to is not in the tracking store "
                        "%s (another machine, save_dir or MLFLOW_TRACKING_URI): logging to a new "
                        "MLflow run.", self._run_id, self._tracking_uri)
            self._run_id = None
            return super().experiment
        finally:
            if before is None:
                os.environ.pop(TRACKING_URI_VARIABLE, None)
            else:
                os.environ[TRACKING_URI_VARIABLE] = before


class WandbLogger(_WandbLogger):
    """Lightning's W&B logger without the ``anonymous=None`` it always passes to ``wandb.init``,
    which makes W&B warn about its deprecated anonymous setting on every run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def started(self) -> bool:
        """Whether the W&B run has been started (``experiment`` read once, successfully)."""
        return self._experiment is not None

    @property
    def experiment(self) -> Any:
        """The W&B run, started when Lightning first logs (before the first training step). W&B's
        refusal to start one (no API key, outside a terminal that could ask for one) is one
        paragraph saying what to do, not a traceback."""
        import wandb

        try:
            return super().experiment
        except wandb.errors.UsageError as err:
            raise ConfigError(
                f"logger=wandb: W&B did not start a run: {err} Log in with `wandb login` (or "
                "set WANDB_API_KEY), or log offline with WANDB_MODE=offline (the run's files "
                "under <run dir>/wandb; `wandb sync <run dir>/wandb/offline-run-*` uploads them "
                "later), or choose another logger (logger=csv, the default). Nothing was "
                "trained.") from None
