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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
    """Whether ``directory`` already holds a run (its config, checkpoints or results)."""
    directory = Path(directory)
    return any((directory / name).exists() for name in (HYDRA, CHECKPOINTS, RESULTS))


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a reader sees the old file or the new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, path)
