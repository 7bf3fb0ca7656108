"""The runs behind the Figure-2 reproduction page: each training run read from its ``curve.json``.

A run is one (data set, latent size Nz, method) curve of the bound against training samples seen;
this module finds and checks them (one run per key, samples seen increasing) and reads a curve at
any count of samples seen, so the page's figures and tables share one reading of the outputs.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_lightning import rundir

METHODS = {"aevb": "AEVB", "wake_sleep": "wake-sleep"}  # page order: AEVB first
DATA_NAMES = {"frey": "Frey Face", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
TRAIN, TEST = "train/elbo", "test/elbo"


class ReproductionError(ValueError):
    """Runs that cannot make the page: none found, a malformed curve.json, or two of a kind."""


@dataclass(frozen=True)
class Run:
    """One training run: its directory and its ``curve.json``."""

    dir: Path
    data: str
    latent: int
    method: str
    config: dict[str, Any] = field(repr=False)
    points: list[dict[str, Any]] = field(repr=False)
    train_size: int | None = None
    test_size: int | None = None
    status: str = "running"  # results.json's status (completed, diverged, ...); none: running

    @property
    def key(self) -> tuple[str, int, str]:
        return self.data, self.latent, self.method

    @property
    def last(self) -> dict[str, Any]:
        """The latest evaluation (the end of training when the run finished)."""
        return self.points[-1]

    @property
    def samples_seen(self) -> int:
        return int(self.last["samples_seen"])


def load_run(path: Path) -> Run:
    """The run whose ``curve.json`` is ``path``."""
    try:
        curve = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReproductionError(f"cannot read {str(path)!r}: {err}.") from None
    missing = [k for k in ("data", "latent", "method", "points") if k not in curve]
    if missing:
        raise ReproductionError(f"{str(path)!r} lacks {', '.join(missing)}: a curve.json names "
                                "its data, latent, method and points.")
    if curve["method"] not in METHODS:
        raise ReproductionError(f"{str(path)!r} has method {curve['method']!r}; this page "
                                f"compares {' and '.join(map(repr, METHODS))} only.")
    if not isinstance(curve["latent"], int) or isinstance(curve["latent"], bool) \
            or curve["latent"] < 1:
        raise ReproductionError(f"{str(path)!r} has latent {curve['latent']!r}: a curve.json's "
                                "latent is the latent size Nz, an integer >= 1.")
    points = curve["points"]
    if isinstance(points, list) and not all(isinstance(p, dict) for p in points):
        raise ReproductionError(f"{str(path)!r}: its points are not all objects; each point of "
                                "a curve.json is one, with samples_seen and the bounds.")
    for index, point in enumerate(points if isinstance(points, list) else []):
        for key in (TRAIN, TEST):  # read as numbers by the figures and tables (null: none)
            value = point.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise ReproductionError(f"{str(path)!r}: point {index} has {key} {value!r}: a "
                                        "bound is a number, or null where it was not measured.")
    seen = [p.get("samples_seen") for p in points] if isinstance(points, list) else [None]
    if not points or not all(isinstance(s, int | float) and s > 0 for s in seen):
        raise ReproductionError(f"{str(path)!r} has no points, or a point without a positive "
                                "samples_seen; each point needs one (the x-axis is logarithmic).")
    if any(b < a for a, b in zip(seen, seen[1:])):
        raise ReproductionError(f"{str(path)!r}: samples_seen decreases ({seen}); points must be "
                                "in increasing samples_seen.")
    return Run(dir=path.parent, data=str(curve["data"]), latent=int(curve["latent"]),
               method=curve["method"], config=curve.get("config") or {}, points=points,
               train_size=curve.get("train_size"), test_size=curve.get("test_size"),
               status=_status(path.parent))


def _status(run_dir: Path) -> str:
    """The run's status from its results.json (written when it ended), else "running"."""
    results = rundir.path(run_dir, "results")
    if not results.is_file():
        return "running"
    try:
        return str(json.loads(results.read_text()).get("status", "completed"))
    except (OSError, json.JSONDecodeError):
        return "unreadable results.json"


def check_unique(runs: Iterable[Run]) -> None:
    """Raise when two runs share (data, latent, method): the page has one row for each."""
    seen: dict[tuple[str, int, str], Run] = {}
    for run in runs:
        if run.key in seen:
            data, latent, method = run.key
            raise ReproductionError(
                f"two runs of data={data}, latent={latent}, method={method}: "
                f"{str(seen[run.key].dir)!r} and {str(run.dir)!r}; pass only one of them.")
        seen[run.key] = run


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs in ``paths``: each a run directory, a ``curve.json`` or a directory searched
    recursively; sorted by data set, latent size and method. A curve found twice counts once."""
    paths = [Path(p) for p in paths]
    files: dict[Path, Path] = {}
    for path in paths:
        if not path.exists():
            raise ReproductionError(f"{str(path)!r} does not exist: pass run directories or "
                                    "directories holding them.")
        found = [path] if path.is_file() else sorted(path.rglob(rundir.CURVE))
        for file in found:
            files.setdefault(file.resolve(), file)
    if not files:
        searched = ", ".join(repr(str(p)) for p in paths)
        raise ReproductionError(f"no curve.json under {searched}: point at training run "
                                "directories, or directories holding them.")
    runs = sorted((load_run(f) for f in files.values()), key=page_order)
    check_unique(runs)
    return runs


def left_out(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """The jobs under ``paths`` that ended without a ``curve.json`` (a results.json but no
    curve: refused before training, bad input or missing data), each with its status: not on
    the page, and said so (a sweep of four whose three failed made a page of one, without a
    word; newcomer walkthrough eight)."""
    found = {}
    for path in map(Path, paths):
        if path.is_dir():
            for results in sorted(path.rglob(rundir.RESULTS)):
                if not (results.parent / rundir.CURVE).exists():
                    found.setdefault(results.parent.resolve(),
                                     (results.parent, _status(results.parent)))
    return list(found.values())


def page_order(run: Run) -> tuple:
    """The page's order of runs: by data set (the paper's first), latent size, method."""
    data = list(DATA_NAMES).index(run.data) if run.data in DATA_NAMES else len(DATA_NAMES)
    return data, run.data, run.latent, list(METHODS).index(run.method)


def curve_points(points: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """The samples seen and the values of ``key`` at the points that have it."""
    pairs = [(float(p["samples_seen"]), float(p[key])) for p in points if p.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def at_samples(points: list[dict[str, Any]], n: float, key: str = TEST) -> float:
    """The curve ``key`` at ``n`` samples seen: linear in log10(samples seen) between the two
    evaluations around ``n``, v = v_i + (v_{i+1} - v_i) log(n / s_i) / log(s_{i+1} / s_i).
    Refuses an ``n`` outside the evaluated range (no extrapolation)."""
    seen, values = curve_points(points, key)
    if not seen:
        raise ValueError(f"no {key!r} in the curve's points.")
    if not seen[0] <= n <= seen[-1]:
        raise ValueError(f"{n:g} samples is outside the curve's range of {key!r}, "
                         f"{seen[0]:g} to {seen[-1]:g}: interpolation only, no extrapolation.")
    j = bisect.bisect_right(seen, n)
    if seen[j - 1] == n:
        return values[j - 1]
    t = math.log10(n / seen[j - 1]) / math.log10(seen[j] / seen[j - 1])
    return values[j - 1] + t * (values[j] - values[j - 1])
