"""Sweeps (``vae-train -m``) that survive a failing job, and jobs that share the machine.

Every run ends with a ``status`` in its ``results.json``:

- ``completed``: trained to its length; the bound is sound;
- ``diverged``: trained to its length, but the bound ran away: the validation bound of the best
  checkpoint (without validation, the training bound of the last epoch) is not finite or is
  below b0 - |b0|, or the training bound is not finite,
  where b0 is the validation bound of the untrained model (``callbacks.InitialBound``, measured
  before the first step): twice as far below zero as where training started, which a working
  training never ends (exit code 4);
- ``nonfinite``: the loss became NaN or infinite; training stopped (exit code 3);
- ``interrupted``: a signal stopped training; it resumes with ``ckpt_path`` (exit 130 / 143);
- ``error``: the job could not run: bad input (exit 2), files that cannot be written (74), or a
  bug (1).

Under ``-m`` a job that fails writes its status, message and partial curve, and the sweep goes
on; at its end ``SweepReport`` prints one line counting the jobs by status, and the command
exits with code 5 if any job failed. Jobs started by Hydra's joblib launcher take
``cores / n_jobs`` torch threads each (``threads_per_job``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from vae_lightning import rundir

log = logging.getLogger(__name__)

COMPLETED = "completed"
STATUSES = (COMPLETED, "diverged", "nonfinite", "interrupted", "error")
SWEEP_FAILED = 5  # the exit code of a sweep with failed jobs


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def overrides() -> list[str]:
    """This job's command-line overrides (Hydra's record of them), if under Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def record_failure(directory: str | Path, status: str, message: str, exit_code: int,
                   replace_failures: bool = False, **extra: Any) -> Path | None:
    """Write a failed run's ``results.json``: its status, message, exit code and the curve it
    reached (``curve.json``'s points). Results already there stay as they are (an earlier run's),
    except, with ``replace_failures``, an earlier failure of this run (a resumed run)."""
    path = rundir.path(directory, "results")
    if not Path(directory).is_dir():
        return None
    if path.exists():
        earlier = json.loads(path.read_text()).get("status", COMPLETED)
        if not replace_failures or earlier == COMPLETED:
            return None
    curve = rundir.path(directory, "curve")
    points = json.loads(curve.read_text()).get("points", []) if curve.is_file() else []
    rundir.write_json(path, {"status": status, "message": message, "exit_code": exit_code,
                             **extra, "curve": points})
    return path


def threads_per_job() -> int | None:
    """The torch threads a job should take so that the jobs running at once share the cores:
    ``cores // n_jobs`` under Hydra's joblib launcher; None otherwise (torch's default)."""
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    if not str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jobs = launcher.get("n_jobs") or -1
    jobs = cores if jobs < 0 else jobs
    return max(1, (cores or 1) // max(1, jobs))


class SweepReport(Callback):
    """At the end of a ``vae-train -m`` sweep: one line counting this sweep's jobs (those whose
    directory it wrote) by status (a job without ``results.json`` counts as an ``error``), and
    exit code 5 if any failed."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "trainer" not in config:  # a sweep of vae-eval or vae-sample: nothing to count
            return
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / rundir.HYDRA).is_dir()
                      and p.stat().st_mtime >= self.started) if sweep.is_dir() else []
        statuses: dict[str, str] = {}
        for job in jobs:
            results = rundir.path(job, "results")
            statuses[job.name] = (json.loads(results.read_text()).get("status", COMPLETED)
                                  if results.is_file() else "error")
        counts = Counter(statuses.values())
        failed = {job: status for job, status in statuses.items() if status != COMPLETED}
        summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
        line = (f"sweep {sweep}: {len(jobs)} jobs: {summary or 'none'}"
                + (f"; failed: {', '.join(f'job {j} ({s})' for j, s in failed.items())}"
                   if failed else ""))
        log.info(line)
        print(line, flush=True)
        if failed:
            raise SystemExit(SWEEP_FAILED)
