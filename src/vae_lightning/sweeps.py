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
exits with code 5 if any job failed. A signal ends the sweep with the job's status (where its
directory exists), the error line and the same count (exit code 130 / 143). Jobs started by
Hydra's joblib launcher take ``cores / n_jobs`` torch threads each (``threads_per_job``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from vae_lightning import rundir
from vae_lightning.errors import ConfigError

log = logging.getLogger(__name__)

COMPLETED = "completed"
STATUSES = (COMPLETED, "diverged", "nonfinite", "interrupted", "error")
SWEEP_FAILED = 5  # the exit code of a sweep with failed jobs


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def overrides() -> list[str]:
    """This job's command-line overrides (Hydra's record of them), if under Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _composing(hydra_overrides: Any) -> list[str]:
    """Of Hydra's own overrides, those a command needs to compose the same config again: the
    config search path (``hydra.searchpath``, groups of one's own)."""
    return [str(item) for item in hydra_overrides
            if str(item).lstrip("+~").startswith("hydra.searchpath=")]


def command_overrides() -> list[str]:
    """This job's overrides as a command that composes its config again (to resume it, or run
    it again): ``overrides()`` and the search path given, which Hydra records apart."""
    if not HydraConfig.initialized():
        return []
    return [*_composing(HydraConfig.get().overrides.hydra), *overrides()]


def record_failure(directory: str | Path, status: str, message: str, exit_code: int,
                   replace_failures: bool = False, **extra: Any) -> Path | None:
    """Write a failed run's ``results.json``: its status, message, exit code and the curve it
    reached (``curve.json``'s points). Results already there stay as they are (an earlier run's),
    except, with ``replace_failures``, an earlier failure of this run (a resumed run)."""
    path = rundir.path(directory, "results")
    if not Path(directory).is_dir():
        return None
    if path.exists():  # one that does not parse ("unreadable") is kept as it is, never replaced
        earlier = job_status(directory)
        if not replace_failures or earlier in (COMPLETED, "unreadable"):
            return None
    curve = rundir.path(directory, "curve")
    try:  # the curve reached, where its file can be read (a failure is reported all the same)
        points = json.loads(curve.read_text()).get("points", []) if curve.is_file() else []
        points = points if isinstance(points, list) else []
    except (OSError, ValueError, AttributeError):
        points = []
    rundir.write_json(path, {"status": status, "message": message, "exit_code": exit_code,
                             **extra, "curve": points})
    return path


def job_status(directory: str | Path) -> str | None:
    """The status the results.json in ``directory`` records (one without a status: completed,
    as the first versions wrote it), "unreadable" where it does not parse, None without one."""
    found = rundir.status(directory)
    return COMPLETED if found == "None" else found


def threads_per_job() -> int | None:
    """The torch threads a job should take so that the jobs running at once share the cores:
    ``cores // n_jobs`` under Hydra's joblib launcher; None otherwise (torch's default)."""
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    if not str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return None
    return share_of_cores(parallel_jobs(launcher.get("n_jobs", -1)))


def parallel_jobs(n_jobs: int) -> int:
    """The jobs joblib runs at once for its ``n_jobs``: that many, or for a negative one
    ``cores + 1 + n_jobs`` (-1: one per core, -2: all cores but one), at least one."""
    return n_jobs if n_jobs > 0 else max(1, available_cores() + 1 + n_jobs)


def check_launcher(launcher: Any) -> None:
    """Refuse, before the sweep starts, a joblib launcher's ``n_jobs`` that joblib rejects only
    once the jobs are dispatched (0, or not a whole number), with what it accepts."""
    if not str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return
    n_jobs = launcher.get("n_jobs", -1)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise ConfigError(
            f"hydra.launcher.n_jobs={n_jobs!r} is not allowed: give the jobs to run at once (a "
            "whole number >= 1), or -m for all cores but m - 1 (-1: one job per core, the "
            "default; -2: all cores but one).")


OPTUNA_DIRECTIONS = ("minimize", "maximize")


# The direction in which each of results.json's metrics is better, where it has one (a KL may
# be searched either way): a search the other way returns the worst model as the best.
BETTER = {"elbo": "maximize", "recon": "maximize", "bits_per_dim": "minimize"}


def check_sweeper(sweeper: Any, metric: Any = None) -> None:
    """Refuse, before the study starts, Optuna sweeper settings that its plugin takes and then
    fails on: a direction other than minimize / maximize (a traceback), or several (a
    multi-objective study: each trial, which returns one number, failed, and the command still
    exited 0 with no best trial), n_jobs < 1 (a ZeroDivisionError), n_trials < 1 (no trial,
    then "each failed"), a max_failure_rate outside [0, 1] (a bare AssertionError); and a
    direction against the ``metric`` it optimises (``optimized_metric=val/bits_per_dim`` with
    the default maximize: the search's best was its worst model, silently), or no ``metric``
    at all (hydra/sweeper=optuna without hparams_search: each trial returned None)."""
    if not str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        return
    found = []
    direction = sweeper.get("direction")
    one = direction[0] if isinstance(direction, Sequence) and not isinstance(
        direction, str) and len(direction) == 1 else direction
    one = getattr(one, "name", one)  # the plugin's own default is its enum, Direction.minimize
    if not isinstance(one, str) or one not in OPTUNA_DIRECTIONS:
        found.append(f"hydra.sweeper.direction={_plain(direction)!r} is not allowed: "
                     f"{' or '.join(OPTUNA_DIRECTIONS)} (each trial returns one number, its "
                     "optimized_metric; several directions would make a multi-objective study, "
                     "in which every trial fails)")
    elif isinstance(metric, str) and BETTER.get(metric.split("/")[-1], one) != one:
        better = BETTER[metric.split("/")[-1]]
        found.append(f"hydra.sweeper.direction={one} is not allowed with optimized_metric="
                     f"{metric}, which is better {'higher' if better == 'maximize' else 'lower'}"
                     f": the search would return its worst trial as the best; give "
                     f"hydra.sweeper.direction={better}")
    for key, what in (("n_trials", "the trials to run"),
                      ("n_jobs", "the trials asked of the sampler at once")):
        value = sweeper.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            found.append(f"hydra.sweeper.{key}={value!r} is not allowed: a whole number >= 1 "
                         f"({what})")
    rate = sweeper.get("max_failure_rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        found.append(f"hydra.sweeper.max_failure_rate={rate!r} is not allowed: a number from 0 "
                     "to 1 (the share of a batch's trials that may fail before the search "
                     "stops)")
    if metric is None:
        # Each trial returns its results.json's optimized_metric to the study: without one it
        # returned None, and the first trial ended, after its training, in "Return value must
        # be float-castable. Got 'None'" and a RuntimeError traceback (exit 1).
        found.append("the Optuna sweeper (hydra/sweeper=optuna) optimises each trial's "
                     "optimized_metric, and none is given: use hparams_search=optuna (which "
                     "sets it, val/elbo, and the search space), or give optimized_metric=val/elbo "
                     "(a key of results.json) and hydra.sweeper.direction")
    if found:
        raise ConfigError("; ".join(found) + ". Nothing was run.")


def _swept_on_the_command_line(config: DictConfig) -> list[str]:
    """The keys the command line sweeps (``model.latent=2,5``, ``'x=choice(3,4)'``: Hydra's
    sweep overrides among the task's), which every sweeper, the Optuna one too, adds to its
    search."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = [str(item) for item in OmegaConf.select(config, "hydra.overrides.task", default=[])]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override itself
        return []
    return [item.key_or_group for item in parsed if item.is_sweep_override()]


def check_search_space(config: DictConfig) -> None:
    """Refuse, before the sweep, a swept or searched key (``hydra.sweeper.params``, or a sweep
    override on the command line) that this model composes from other keys (an
    interpolation: ``model=hierarchy`` and ``ladder`` sum their layers' sizes into
    ``model.latent``; ``model.decoder.latent`` is ``${model.latent}``): each job's value replaced
    the composed one and was refused against the rest, so every job failed and the study or
    sweep ended with none completed."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    searched = [str(key) for key in params] if isinstance(params, DictConfig) else []
    found = []
    for key in dict.fromkeys([*searched, *_swept_on_the_command_line(config)]):
        if not key.startswith("model."):
            # Only the model's sizes are composed and checked against each other; elsewhere an
            # interpolation is a default (data.root=${oc.env:VAE_DATA_DIR,data}, data.seed=
            # ${seed}) that a sweep replaces as any value: -m data.seed=1,2 was refused.
            continue
        parent, _, last = key.rpartition(".")
        node = OmegaConf.select(config, parent, default=None) if parent else config
        if isinstance(node, DictConfig) and last in node and OmegaConf.is_interpolation(node,
                                                                                        last):
            found.append(f"{key} (here {node._get_node(last)._value()})")
    if found:
        raise ConfigError(
            f"The sweep varies {', '.join(found)}, which this model composes from other keys: "
            "every job's value would be refused against them. Sweep or search the keys it is "
            "composed from instead (for hydra.sweeper.params, with a search file of your own "
            "without it: docs/commands.md, hparams_search).")


def check_jobs(config: DictConfig) -> None:
    """Refuse, before the first job of a grid sweep (Hydra's basic sweeper) runs, a sweep in
    which any job's config would be refused (``config_checks.check``, which each job of every
    command runs as it starts): ``-m model.latent=8,-1`` trained the first job for its whole
    length, then refused the second; ``vae-eval -m eval.k=5000,-5`` the same. Each job is
    composed as Hydra's launcher composes it (its number, its directory), and every refused
    job is named with its swept values and its problems. Optuna's trials draw their values as
    the study goes: each is checked as it starts."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict, read_write

    from vae_lightning.config_checks import check

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}" \
            or not GlobalHydra.instance().is_initialized():
        return
    loader = GlobalHydra.instance().config_loader()
    given = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    task = [*given, *map(str, config.hydra.overrides.task)]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(task)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    swept = {item.get_key_element() for item in parsed if item.is_sweep_override()}
    master = HydraConfig.instance().cfg
    refused: dict[str, list[int]] = {}  # each problem, and the jobs it is found in
    values = {}
    try:
        for number, job in enumerate(jobs):
            try:
                job_config = loader.load_sweep_config(master_config=config, sweep_overrides=job)
            except Exception:  # noqa: BLE001 - a job that does not compose (data=nosuch):
                return  # Hydra's sweeper composes each job next and reports it in one line
            with read_write(job_config.hydra), open_dict(job_config.hydra):
                job_config.hydra.job.num = number
                job_config.hydra.job.id = str(number)
                job_config.hydra.runtime.output_dir = os.path.abspath(os.path.join(
                    str(job_config.hydra.sweep.dir), str(job_config.hydra.sweep.subdir)))
            HydraConfig.instance().set_config(job_config)
            with read_write(job_config), open_dict(job_config):
                del job_config["hydra"]
            try:
                check(job_config)
            except ConfigError as err:
                values[number] = " ".join(item for item in job if item.split("=")[0] in swept)
                for line in str(err).removeprefix("Invalid configuration:").strip().splitlines():
                    refused.setdefault(line.strip().removeprefix("- "), []).append(number)
    finally:
        HydraConfig.instance().cfg = master
    if refused:
        raise ConfigError(
            f"{len(values)} of the sweep's {len(jobs)} jobs would be refused as they start; "
            "nothing was run. Remove or correct their values:\n  - " + "\n  - ".join(
                f"{problem} ({_jobs_named(numbers, values)})"
                for problem, numbers in refused.items()))


def _jobs_named(numbers: list[int], values: dict[int, str]) -> str:
    """Jobs by number: one with its swept values, a few by number, many counted."""
    if len(numbers) == 1:
        return f"job {numbers[0]}: {values[numbers[0]]}"
    named = ", ".join(map(str, numbers[:6])) + (", ..." if len(numbers) > 6 else "")
    return f"jobs {named}" if len(numbers) <= 6 else f"{len(numbers)} jobs: {named}"


def _plain(value: Any) -> Any:
    """An OmegaConf list as a Python list, for the message."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def share_of_cores(jobs: int) -> int:
    """The threads for each of ``jobs`` processes sharing the cores this process may run on, at
    least one; ``jobs`` < 1 means one process per core."""
    cores = available_cores()
    return max(1, cores // (cores if jobs < 1 else jobs))


class _Sweep(NamedTuple):
    directory: Path
    started: float  # jobs whose directory changed since then are this sweep's


_sweep: list[_Sweep] = []  # the sweep this process runs, once it started

# Jobs of a sweep whose status no results.json of their own says: a fresh run refused in a
# directory that holds an earlier run (whose files it leaves as they were), or one another
# process holds; and every job of vae-eval, vae-sample and vae-encode, which write no
# results.json. Each such job writes ``<sweep dir>/.job-status/job-<num>.json`` (its directory,
# status, message, exit code): a file, not this process's memory, so that the jobs Hydra's
# joblib launcher (or submitit) runs in other processes are counted too. ``summary`` reads
# them; the sweep's start and end remove the folder.
JOB_NOTES = ".job-status"


def note_job(directory: str | Path, status: str, message: str | None = None,
             exit_code: int | None = None) -> None:
    """This job of the sweep (its directory ``directory``) ended with ``status`` without a
    results.json of its own to say so (see ``JOB_NOTES``)."""
    if not in_sweep():
        return
    hydra = HydraConfig.get()
    folder = Path(hydra.sweep.dir) / JOB_NOTES
    try:
        folder.mkdir(parents=True, exist_ok=True)
        rundir.write_json(folder / f"job-{hydra.job.num}.json",
                          {"job": str(Path(directory).absolute()), "status": status,
                           "message": message, "exit_code": exit_code})
    except OSError as err:  # counted as an error (no status) at the end: say why here
        log.warning("This job's status (%s) could not be noted in %s: %s", status, folder, err)


def note_unrecorded(directory: str | Path, status: str) -> None:
    """A job of the sweep failed (``status``) without writing its results.json."""
    note_job(directory, status)


def job_directory() -> Path | None:
    """The directory Hydra made for this job (``hydra.runtime.output_dir``), if under Hydra."""
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _notes(sweep: _Sweep) -> dict[Path, str]:
    """The noted jobs of ``sweep`` (``note_job``): {job directory: status}."""
    found: dict[Path, str] = {}
    folder = sweep.directory / JOB_NOTES
    for note in sorted(folder.glob("job-*.json")) if folder.is_dir() else []:
        try:
            if note.stat().st_mtime < sweep.started:  # an earlier sweep's, left by a kill
                continue
            record = json.loads(note.read_text())
            found[Path(record["job"])] = str(record["status"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _forget_notes(directory: Path) -> None:
    shutil.rmtree(directory / JOB_NOTES, ignore_errors=True)


def _jobs(sweep: _Sweep) -> list[Path]:
    """The directories of ``sweep``'s jobs: those with Hydra's record that it wrote."""
    directory = sweep.directory
    return sorted(p for p in directory.iterdir() if p.is_dir() and (p / rundir.HYDRA).is_dir()
                  and p.stat().st_mtime >= sweep.started) if directory.is_dir() else []


def summary(sweep: _Sweep) -> tuple[str, bool]:
    """One line counting ``sweep``'s jobs by status (a job without ``results.json`` counts as an
    ``error``; a job that noted its status, ``note_job``, as that status), and whether any
    failed."""
    jobs = _jobs(sweep)
    statuses: dict[str, str] = {}
    for job in jobs:
        statuses[job.name] = job_status(job) or "error"
    root = sweep.directory.absolute()
    for job, status in _notes(sweep).items():  # e.g. a refused job left its directory as it was
        statuses[str(job.relative_to(root)) if job.is_relative_to(root) else str(job)] = status
    counts = Counter(statuses.values())
    failed = {job: statuses[job] for job in sorted(statuses, key=_job_order)
              if statuses[job] != COMPLETED}
    line = (f"sweep {sweep.directory}: {len(statuses)} jobs: "
            + (", ".join(f"{counts[s]} {s}" for s in (*STATUSES, *sorted(set(counts)
                                                                  - set(STATUSES))) if counts[s])
               or "none")
            + (f"; failed: {', '.join(f'job {j} ({s})' for j, s in failed.items())}"
               if failed else ""))
    return line, bool(failed)


def _job_order(name: str) -> tuple[int, str]:
    """Jobs 0, 1, ..., 10 in their numbers' order (Hydra's sweep.subdir), other names after."""
    return (int(name), "") if name.isdigit() else (1 << 62, name)


def _job_overrides(job: Path) -> list[str]:
    record = job / rundir.HYDRA / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(record)] if record.is_file() else []


def resumable_jobs() -> list[Path]:
    """The jobs of the sweep this process runs that have no results yet but a last checkpoint:
    those another process ran (Hydra's joblib launcher), stopped with this one."""
    return [job for job in (_jobs(_sweep[-1]) if _sweep else [])
            if not rundir.path(job, "results").exists() and rundir.last_checkpoint(job).is_file()]


def interrupted(message: str, exit_code: int) -> None:
    """A signal ended the sweep this process runs, if any: each of its jobs that started and
    has no results yet gets the status ``interrupted`` (its directory exists: Hydra's record
    is in it), with the command that resumes it where it has a last checkpoint, and the sweep's
    line is printed as at its end."""
    from vae_lightning.signals import stopped

    if not _sweep:
        return
    resumable = resumable_jobs()
    noted = _notes(_sweep[-1])  # ended before the signal (a vae-eval job), or refused
    for job in _jobs(_sweep[-1]):
        if job.absolute() in noted:
            continue
        overrides = _job_overrides(job)
        record = job / rundir.HYDRA / "hydra.yaml"
        searchpath = (_composing(OmegaConf.select(OmegaConf.load(record), "hydra.overrides.hydra",
                                                  default=[]))
                      if record.is_file() else [])
        record_failure(job, "interrupted",
                       str(stopped(exit_code - 128, str(job), [*searchpath, *overrides]))
                       if job in resumable else message, exit_code, overrides=overrides)
    print(summary(_sweep[-1])[0], flush=True)
    _forget_notes(_sweep[-1].directory)


def check_study(storage: Any) -> None:
    """Refuse an Optuna study whose SQLite file (``hydra.sweeper.storage``) is not a database,
    before the sweep starts, naming the file and what to do."""
    url = str(storage or "")
    if not url.startswith("sqlite:///"):
        return
    path = Path(url[len("sqlite:///"):])
    if not path.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            found = db.execute("PRAGMA quick_check").fetchall()  # every page, not the data
        problem = None if found == [("ok",)] else "; ".join(str(row[0]) for row in found[:3])
    except sqlite3.DatabaseError as err:
        problem = str(err)
    if problem is not None:
        raise ConfigError(
            f"The Optuna study file {path} (hydra.sweeper.storage) is not a sound SQLite "
            f"database ({problem}); nothing was run. Move it away to start a new study there, "
            "or choose another hydra.sweep.dir.")


class SweepReport(Callback):
    """At the end of a sweep (``-m``) of any command: one line counting this sweep's jobs by
    status (``summary``), and exit code 5 if any failed. It also notes the sweep when it
    starts, for the line a signal ends it with (``interrupted``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _sweep[:] = [_Sweep(Path(config.hydra.sweep.dir), time.time() - 1.0)]
        _forget_notes(_sweep[-1].directory)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not _sweep:
            return
        sweep = _sweep.pop()
        line, failed = summary(sweep)
        _forget_notes(sweep.directory)
        metric = config.get("optimized_metric")
        if str(config.hydra.sweeper.get("_target_", "")).endswith("OptunaSweeper") \
                and isinstance(metric, str) and (best := best_trial(sweep.directory, metric)):
            print(best, flush=True)
        print(line, flush=True)
        if failed:
            raise SystemExit(SWEEP_FAILED)


def best_trial(directory: Path, metric: str) -> str | None:
    """The line naming the run directory of an Optuna study's best trial: the job under the
    study's ``directory`` whose results.json holds the best value the sweeper wrote
    (``optimization_results.yaml``), of this or an earlier run of the study. Optuna's own lines
    give the best trial's settings, not where it ran, which vae-export and vae-eval need."""
    import yaml

    try:
        with open(directory / "optimization_results.yaml") as file:
            best = (yaml.safe_load(file) or {}).get("best_value")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not isinstance(best, int | float) or isinstance(best, bool):
        return None
    for results in sorted(directory.glob(f"*/{rundir.RESULTS}")):
        try:
            value = json.loads(results.read_text()).get(metric)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int | float) and value == best:
            return (f"The study's best trial ({metric}={best:g}) ran in {results.parent}: "
                    f"vae-export {results.parent} model.ckpt, vae-eval ckpt_path="
                    f"{results.parent / rundir.CHECKPOINTS / rundir.LAST}")
    return None
