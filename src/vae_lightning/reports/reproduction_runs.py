"""The runs behind the Figure-2 reproduction page: each training run read from its ``curve.json``.

A run is one (data set, latent size Nz, method) curve of the bound against training samples seen;
this module finds and checks them (one run per key, samples seen increasing) and reads a curve at
any count of samples seen, so the page's figures and tables share one reading of the outputs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from vae_lightning import rundir
from vae_lightning.reports import json_files
from vae_lightning.reports.json_files import NATS, finite, nats, optional, text, whole

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


WHAT = "the run's curve.json (the bound along training)"
FIX = "mend it, or move its run out of the folders given, and make the page again"




# What the page reads of a curve.json (callbacks.BoundCurve writes it), and of each point.
READ_CURVE = {
    "data": (text, "the data set's name, a string"),
    "latent": (partial(whole, least=1), "the latent size Nz, an integer >= 1"),
    "method": (lambda value: value in METHODS, f"one of {', '.join(map(repr, METHODS))} (this "
               "page compares these methods only)"),
    "points": (lambda value: isinstance(value, list) and len(value) > 0,
               "a non-empty list of points"),
    "config": (optional(lambda value: isinstance(value, dict)), "the run's config, an object"),
    # The seeds table pairs each seed's AEVB run with its wake-sleep run by this value (a dict
    # key): a list there was a TypeError traceback (unhashable), a bool the seed 1.
    "config.seed": (optional(lambda value: whole(value, least=-2**63)),
                    "the run's seed, an integer, or null"),
    "train_size": (optional(whole), "the number of training points, an integer >= 0, or null"),
    "test_size": (optional(whole), "the number of test points, an integer >= 0, or null"),
}
READ_POINT = {
    # Below 2**63 (the run's int64 counter): a count of 1e308 overflowed the logarithmic axis's
    # margin (a matplotlib warning, "overflow encountered in exp"), as a bound of 1e308 did.
    "samples_seen": (lambda value: finite(value) and 0 < value < 2**63,
                     "a positive number below 2**63 (the x-axis is logarithmic)"),
    TRAIN: (optional(nats), f"{NATS}, or null (not measured)"),
    TEST: (optional(nats), f"{NATS}, or null (not measured)"),
}


def load_run(path: Path) -> Run:
    """The run whose ``curve.json`` is ``path``, checked as every report reads its JSON files
    (``json_files``: a regular file only; one error naming the file, the key, its value and
    what is accepted)."""
    curve = json_files.read_object(path, WHAT, FIX, ReproductionError, READ_CURVE,
                                   required=("data", "latent", "method", "points"))
    points = curve["points"]
    for index, point in enumerate(points):
        if not isinstance(point, dict):
            raise ReproductionError(f"{path}: {WHAT}'s point {index} is {point!r}, not an "
                                    f"object with samples_seen and the bounds; {FIX}.")
        json_files.checked(path, point, READ_POINT, f"{WHAT}'s point {index}", FIX,
                           ReproductionError, required=("samples_seen",))
    seen = [p["samples_seen"] for p in points]
    if any(b < a for a, b in zip(seen, seen[1:])):
        raise ReproductionError(f"{path}: {WHAT}'s samples_seen decreases ({seen}): its points "
                                f"must be in increasing samples_seen; {FIX}.")
    return Run(dir=path.parent, data=curve["data"], latent=curve["latent"],
               method=curve["method"], config=curve.get("config") or {}, points=points,
               train_size=curve.get("train_size"), test_size=curve.get("test_size"),
               status=_status(path.parent))


def _status(run_dir: Path) -> str:
    """The run's status from its results.json (written when it ended), else "running"."""
    results = rundir.path(run_dir, "results")
    if not results.exists():
        return "running"
    try:
        found = json_files.read(results, "results.json", "", ReproductionError)
    except ReproductionError:  # a FIFO, a folder, not JSON: said in the status column
        return "unreadable results.json"
    status = found.get("status", "completed") if isinstance(found, dict) else None
    return status if isinstance(status, str) else "unreadable results.json"


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
