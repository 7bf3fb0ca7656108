"""Loggers: Lightning's CSV logger, made to keep a resumed run's history."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv`` when it starts; this one keeps it and
    appends, with the columns it already has."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def drop_after(self, step: int) -> None:
        """Forget the rows logged after ``step``: those of a killed run's steps past the
        checkpoint it resumes from, which the resumed run logs again."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        kept = [row for row in rows if not row.get("step") or int(row["step"]) <= step]
        if len(kept) < len(rows):
            temporary = f"{self.metrics_file_path}.tmp"
            with self._fs.open(temporary, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(temporary, self.metrics_file_path)


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` a resumed run appends to: the
    epochs before the checkpoint stay, the rows after it (a killed run's last steps) are dropped
    when training resumes (``checkpoints.ResumeState``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, step: int) -> None:
        self.experiment.drop_after(step)
