"""The layout of a run directory, in one place:

    <run>/results.json            the run's results (train.py)
    <run>/curve.json              Fig. 2's curve (callbacks.BoundCurve)
    <run>/eval.json               eval.py's estimates
    <run>/checkpoints/last.ckpt   the state after the latest epoch (what a resume continues)
    <run>/checkpoints/best-epochNNN.ckpt, nonfinite-stepN.ckpt
    <run>/figures/                the paper's figures (callbacks.Figures)
    <run>/samples/                vae-sample's samples.png and samples.npy
    <run>/.hydra/                 the run's config and command-line overrides (Hydra)

The configs reach it through the ``${run_path:...}`` resolver. Imports no torch.

A run directory belongs to one run: ``claim`` locks it for the life of the process and notes
whether it already held a run; Hydra writes its record (``.hydra/``) only into a directory that
did not (``${run_record:}``), so a refused or resumed run never rewrites another's record, and
``guard`` refuses a second writer or a fresh run into an existing run's directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

from vae_lightning.errors import ConfigError

RESULTS = "results.json"
CURVE = "curve.json"
EVAL = "eval.json"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
FIGURES = "figures"
SAMPLES = "samples"
HYDRA = ".hydra"
LAYOUT = {"results": RESULTS, "curve": CURVE, "eval": EVAL, "checkpoints": CHECKPOINTS,
          "figures": FIGURES, "samples": SAMPLES}


def path(run: str | Path, part: str) -> Path:
    """``<run>/<part>`` for a part of ``LAYOUT`` (``results``, ``checkpoints``, ...)."""
    return Path(run) / LAYOUT[part]


def last_checkpoint(run: str | Path) -> Path:
    return Path(run) / CHECKPOINTS / LAST


def of_checkpoint(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint: the parent of its ``checkpoints/`` folder, else the
    folder holding it."""
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == CHECKPOINTS else parent


def newest_run(root: str | Path) -> Path | None:
    """The run under ``root/<date>/<time>`` whose ``last.ckpt`` was written last, if any."""
    candidates = sorted(Path(root).glob(f"*/*/{CHECKPOINTS}/{LAST}"),
                        key=lambda p: p.stat().st_mtime)
    return candidates[-1].parent.parent if candidates else None


def is_run(directory: str | Path) -> bool:
    """Whether ``directory`` already holds a run that trained: its checkpoints or results (a
    record alone, of a run refused before training, does not count)."""
    directory = Path(directory)
    return any((directory / name).exists() for name in (CHECKPOINTS, RESULTS))


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a reader sees the old file or the new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as file:
        file.write(json.dumps(payload, indent=2) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class Claim(NamedTuple):
    """This process's claim on a run directory."""

    held_elsewhere: bool  # another process holds the directory's lock
    had_run: bool  # the directory held a run (its record, checkpoints or results) before


_claims: dict[str, Claim] = {}
_locks: list[int] = []  # the locked directories' descriptors, open for the life of the process


def claim(directory: str | Path) -> Claim:
    """Lock ``directory`` (created if needed) for this process, once; later calls return the
    first call's answer. A DDP rank started by Lightning (LOCAL_RANK > 0) shares rank 0's."""
    key = str(Path(directory).resolve())
    if key not in _claims:
        if int(os.environ.get("LOCAL_RANK", "0")) > 0:
            _claims[key] = Claim(False, False)
            return _claims[key]
        had_run = is_run(key)
        Path(key).mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _locks.append(fd)
            held = False
        except BlockingIOError:
            os.close(fd)
            held = True
        _claims[key] = Claim(held, had_run)
    return _claims[key]


def record_dir(directory: str | Path) -> str | None:
    """Where Hydra writes the run's record (``hydra.output_subdir``): ``.hydra`` in a directory
    this process claimed fresh, else nowhere (an existing run's record stays as it is)."""
    found = claim(directory)
    return None if found.held_elsewhere or found.had_run else HYDRA


def guard(directory: str | Path, resuming: bool) -> None:
    """Refuse, before anything is written, a run into ``directory`` while another process writes
    there, or a fresh run (not ``resuming``) into a directory that holds a run."""
    found = claim(directory)
    if found.held_elsewhere:
        raise ConfigError(
            f"hydra.run.dir={directory} is in use by another run (its process holds the "
            "directory's lock): wait for it to end, or choose another hydra.run.dir.")
    if found.had_run and not resuming:
        raise ConfigError(
            f"hydra.run.dir={directory} already holds a run (its checkpoints or results.json); "
            "nothing was written. Resume it with ckpt_path=last and the overrides it was started "
            "with, or choose another hydra.run.dir.")


def record_resume(directory: str | Path, overrides: list[str]) -> Path:
    """Keep a resumed attempt's command-line overrides beside the run's own record."""
    folder = Path(directory) / HYDRA / "resumes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.yaml"
    path.write_text("".join(f"- {item}\n" for item in overrides))
    return path
