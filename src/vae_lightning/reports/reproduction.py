"""The results page of the Figure-2 reproduction (AEVB vs wake-sleep) from training runs' outputs.

`vae-reproduction RUNS [RUNS ...] --out docs/reproduction.md` (or
`python -m vae_lightning.reports.reproduction`): each RUNS is a
run directory, or a directory searched recursively for ``curve.json`` files (each such file's
directory is one run). Next to the page, in ``<page dir>/reproduction/``, it writes:

- ``figure2_<data>.png``: Fig. 2, one panel per latent size Nz, the bound on the test (solid) and
  training (dashed) data against the training samples evaluated (log x), AEVB and wake-sleep in
  two colours;
- ``manifold_<data>_<method>.png``: Fig. 4, each Nz = 2 run's ``figures/manifold.png``;
- ``samples_<data>_nz<k>_<method>.png``: Fig. 5, each run's ``figures/samples.png``.

The page has, per data set, the conditions, Fig. 2, a table of each run's last evaluation beside
the paper's value read from its Fig. 2, each run's test bound at 1e6 and 1e7 samples seen, and the
two methods' test bounds at equal samples seen (each curve interpolated linearly in
log10(samples seen)); then the manifolds and the samples.
The bounds are the ELBO, a lower bound on log p(x), in nats per data point.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_lightning import rundir
from vae_lightning.plotting import pyplot

METHODS = {"aevb": "AEVB", "wake_sleep": "wake-sleep"}  # page order: AEVB first
COLOURS = {"aevb": "C0", "wake_sleep": "C3"}
DATA_NAMES = {"frey": "Frey Face", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
EXTRAS = {"fashion_mnist"}  # data sets the paper did not use: run with its MNIST setup
MILESTONES = (1e6, 1e7)  # samples seen at which every run's test bound is tabulated

# The test-set lower bound (nats per data point) read by eye from Kingma & Welling (2013),
# "Auto-Encoding Variational Bayes", Figure 2, at the right edge of each panel, i.e. after
# "samples" training samples evaluated (about 2e8 for MNIST). The figure gives a few nats at best;
# wake-sleep's Frey Face curves end at about the same height in every panel, and only its MNIST
# Nz = 20 curve can be read with any confidence.
PAPER: dict[str, dict[str, Any]] = {
    "frey": {"samples": 1e8,
             "aevb": {2: 870, 5: 1115, 10: 1305, 20: 1310},
             "wake_sleep": {2: 575, 5: 575, 10: 575, 20: 575}},
    "mnist": {"samples": 2e8,
              "aevb": {3: -133.5, 5: -119, 10: -103.5, 20: -99.5, 200: -99.5},
              "wake_sleep": {20: -104}},
}

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
    points = curve["points"]
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
    runs = sorted((load_run(f) for f in files.values()), key=_order)
    check_unique(runs)
    return runs


def _order(run: Run) -> tuple:
    data = list(DATA_NAMES).index(run.data) if run.data in DATA_NAMES else len(DATA_NAMES)
    return data, run.data, run.latent, list(METHODS).index(run.method)


def _curve(points: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(p["samples_seen"]), float(p[key])) for p in points if p.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def at_samples(points: list[dict[str, Any]], n: float, key: str = TEST) -> float:
    """The curve ``key`` at ``n`` samples seen: linear in log10(samples seen) between the two
    evaluations around ``n``, v = v_i + (v_{i+1} - v_i) log(n / s_i) / log(s_{i+1} / s_i).
    Refuses an ``n`` outside the evaluated range (no extrapolation)."""
    seen, values = _curve(points, key)
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


def figure2(runs: list[Run], data: str, path: Path) -> None:
    """Fig. 2 for one data set: a panel per latent size, bound against training samples
    evaluated (log x); a colour per method, test solid, training dashed."""
    plt = pyplot()
    runs = [r for r in runs if r.data == data]
    if not runs:
        raise ReproductionError(f"no run of data={data!r} to draw Figure 2 from.")
    latents = sorted({r.latent for r in runs})
    fig, axes = plt.subplots(1, len(latents), figsize=(max(6.0, 3.4 * len(latents) + 0.6), 3.8),
                             sharey=True, squeeze=False)
    for ax, latent in zip(axes[0], latents):
        for run in (r for r in runs if r.latent == latent):
            for key, style, split in ((TEST, "-", "test"), (TRAIN, "--", "train")):
                seen, values = _curve(run.points, key)
                if seen:
                    ax.plot(seen, values, style, color=COLOURS[run.method], marker=".",
                            markersize=4, label=f"{METHODS[run.method]} {split}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(f"Nz = {latent}")
        ax.set_xlabel("training samples evaluated")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("lower bound on log p(x)\n(nats per data point)")
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    order = [f"{name} {split}" for name in METHODS.values() for split in ("test", "train")]
    labels = [label for label in order if label in handles]
    axes[0][-1].legend([handles[label] for label in labels], labels, fontsize=8)
    fig.suptitle(f"{DATA_NAMES.get(data, data)}: AEVB vs wake-sleep (Kingma & Welling, Fig. 2)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _get(config: dict[str, Any], *dotted: str) -> Any:
    """The value at the first of the dotted keys that ``config`` has (runs written before the
    model's config was nested keep their older keys), else None."""
    for key in dotted:
        value: Any = config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            return value
    return None


def _condition(runs: list[Run], value: Callable[[Run], Any], per_method: bool = False) -> str:
    """The value every run shares, else each method's values ("AEVB: a / wake-sleep: b, c")."""
    def distinct(rs: list[Run]) -> str:
        values = []
        for r in rs:
            v = value(r)
            text = "not recorded" if v is None else str(v)
            if text not in values:
                values.append(text)
        return ", ".join(values)

    if not per_method and len({distinct([r]) for r in runs}) == 1:
        return distinct(runs[:1])
    methods = [m for m in METHODS if any(r.method == m for r in runs)]
    return " / ".join(f"{METHODS[m]}: {distinct([r for r in runs if r.method == m])}"
                     for m in methods)


def _optimizer(run: Run) -> str | None:
    target = _get(run.config, "model.optimizer._target_", "optimizer._target_")
    lr = _get(run.config, "model.optimizer.lr", "optimizer.lr")
    if target is None and lr is None:
        return None
    name = str(target).rsplit(".", 1)[-1] if target is not None else "optimizer"
    return f"{name} (lr {lr:g})" if isinstance(lr, int | float) else f"{name} (lr {lr})"


def _hidden(run: Run) -> str | None:
    encoder = _get(run.config, "model.encoder.net.hidden", "model.encoder_hidden")
    decoder = _get(run.config, "model.decoder.net.hidden", "model.decoder_hidden")
    if encoder is None:
        return None
    if decoder is None or decoder == encoder:
        return str(encoder)
    return f"encoder {encoder}, decoder {decoder}"


def _activation(run: Run) -> str | None:
    return _get(run.config, "model.encoder.net.activation", "model.activation")


def _scale(run: Run) -> str | None:
    scale = _get(run.config, "data.scale")
    if scale is None:
        return None
    return f"1/{scale:g}" if isinstance(scale, int | float) else f"1/{scale}"


def _splits(run: Run) -> str:
    def size(n: int | None) -> str:
        return "not recorded" if n is None else f"{n:,}"

    return f"{size(run.train_size)} training / {size(run.test_size)} test points"


def _sci(n: float) -> str:
    """A count in short scientific notation: 1e8, 2.5e6."""
    mantissa, exponent = f"{n:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _samples(runs: list[Run]) -> str:
    def span(rs: list[Run]) -> str:
        lo, hi = min(r.samples_seen for r in rs), max(r.samples_seen for r in rs)
        return f"{lo:,}" if lo == hi else f"{lo:,} to {hi:,}"

    if len({r.samples_seen for r in runs}) == 1:
        return span(runs)
    methods = [m for m in METHODS if any(r.method == m for r in runs)]
    return " / ".join(f"{METHODS[m]}: {span([r for r in runs if r.method == m])}" for m in methods)


def conditions(runs: list[Run]) -> str:
    """One paragraph: what the runs of one data set were trained and evaluated on."""
    splits = _condition(runs, _splits)
    parts = [
        f"latent sizes Nz = {', '.join(str(n) for n in sorted({r.latent for r in runs}))}",
        f"split sizes (the bounds average over them): {splits}",
        f"pixels scaled by {_condition(runs, _scale)}",
        f"binarization: {_condition(runs, lambda r: _get(r.config, 'data.binarize') or 'none')}",
        f"minibatch {_condition(runs, lambda r: _get(r.config, 'data.batch_size'))}",
        f"optimizer {_condition(runs, _optimizer, per_method=True)}",
        f"hidden units {_condition(runs, _hidden)}",
        f"activation {_condition(runs, _activation)}",
        f"seed {_condition(runs, lambda r: _get(r.config, 'seed'))}",
        f"training samples seen at the last evaluation: {_samples(runs)}",
    ]
    return "Conditions: " + "; ".join(parts) + "."


def paper_value(run: Run) -> str:
    """The paper's test bound for the run's panel and method, with the count it was read at
    when the run's own count differs from it by more than 5%; "—" where the paper has none."""
    paper = PAPER.get(run.data, {})
    value = paper.get(run.method, {}).get(run.latent)
    if value is None:
        return "—"
    count = paper["samples"]
    if abs(run.samples_seen / count - 1) <= 0.05:
        return f"≈ {value:g}"
    return f"≈ {value:g} at {_sci(count)}"


def _bound(value: Any) -> str:
    return "—" if value is None else f"{float(value):.2f}"


def results_table(runs: list[Run]) -> str:
    """A row per run, its last evaluation beside the paper's test bound."""
    lines = ["| Nz | method | samples seen | train bound | test bound "
             "| paper (test, read from its Fig. 2) | status | run |",
             "|" + " --- |" * 8]
    for r in runs:
        lines.append(f"| {r.latent} | {METHODS[r.method]} | {r.samples_seen:,} "
                     f"| {_bound(r.last.get(TRAIN))} | {_bound(r.last.get(TEST))} "
                     f"| {paper_value(r)} | {r.status} | `{r.dir}` |")
    return "\n".join(lines) + "\n"


def milestones_table(runs: list[Run]) -> str:
    """Each run's test bound at the MILESTONES counts of samples seen (interpolated; "—" where
    the run's curve does not reach the count), and the paper's at its end."""
    head = " | ".join(f"test at {_sci(n)}" for n in MILESTONES)
    lines = [f"| Nz | method | {head} | test at the end (samples) | paper at its end |",
             "|" + " --- |" * (len(MILESTONES) + 4)]
    for r in runs:
        seen, _ = _curve(r.points, TEST)
        cells = [f"{at_samples(r.points, n):.2f}" if seen and seen[0] <= n <= seen[-1] else "—"
                 for n in MILESTONES]
        paper = PAPER.get(r.data, {})
        value = paper.get(r.method, {}).get(r.latent)
        end = "—" if value is None else f"≈ {value:g} at {_sci(paper['samples'])}"
        lines.append(f"| {r.latent} | {METHODS[r.method]} | {' | '.join(cells)} "
                     f"| {_bound(r.last.get(TEST))} ({_sci(r.samples_seen)}) | {end} |")
    return "\n".join(lines) + "\n"


def equal_samples_table(runs: list[Run]) -> str:
    """For each latent size with both methods, their test bounds at each of the MILESTONES that
    both reached and at the largest samples seen that both reached, each curve interpolated
    linearly in log10(samples seen)."""
    by_key = {(r.latent, r.method): r for r in runs}
    latents = sorted({r.latent for r in runs if (r.latent, "aevb") in by_key
                      and (r.latent, "wake_sleep") in by_key})
    if not latents:
        return "No latent size has both an AEVB and a wake-sleep run.\n"
    lines = ["| Nz | samples seen (both) | AEVB test bound | wake-sleep test bound | AEVB − WS |",
             "|" + " --- |" * 5]
    for latent in latents:
        aevb, ws = by_key[latent, "aevb"], by_key[latent, "wake_sleep"]
        (a_seen, _), (w_seen, _) = _curve(aevb.points, TEST), _curve(ws.points, TEST)
        if not a_seen or not w_seen or min(a_seen[-1], w_seen[-1]) < max(a_seen[0], w_seen[0]):
            lines.append(f"| {latent} | no common range | — | — | — |")
            continue
        lo, hi = max(a_seen[0], w_seen[0]), min(a_seen[-1], w_seen[-1])
        for n in [m for m in MILESTONES if lo <= m < hi] + [hi]:
            a, w = at_samples(aevb.points, n), at_samples(ws.points, n)
            lines.append(f"| {latent} | {int(n):,} | {a:.2f} | {w:.2f} | {a - w:+.2f} |")
    return "\n".join(lines) + "\n"


def seeds_table(runs: list[Run], upto: float = 1e5) -> str:
    """AEVB minus wake-sleep test bound at each evaluation up to ``upto`` samples seen, over
    seeds: for each (data, Nz) with at least two seeds of both methods, the mean of the per-seed
    differences (each seed's AEVB run against the same seed's wake-sleep run, at the same counts:
    the curves share their evaluation points) and its standard error, sd / sqrt(seeds)."""
    by = {}
    for run in runs:
        seed = run.config.get("seed")
        by.setdefault((run.data, run.latent), {}).setdefault(seed, {})[run.method] = run
    lines = ["| data | Nz | samples seen | seeds | AEVB − wake-sleep (mean ± s.e.) "
             "| AEVB ahead in |", "|" + " --- |" * 6]
    for (data, latent), seeds in sorted(by.items()):
        pairs = {s: m for s, m in seeds.items() if {"aevb", "wake_sleep"} <= set(m)}
        if len(pairs) < 2:
            continue
        counts = sorted({p["samples_seen"] for m in pairs.values() for p in m["aevb"].points
                         if p["samples_seen"] <= upto})
        for n in counts:
            diffs = []
            for methods in pairs.values():
                a, w = ({p["samples_seen"]: p[TEST] for p in methods[m].points}.get(n)
                        for m in ("aevb", "wake_sleep"))
                if a is not None and w is not None:
                    diffs.append(a - w)
            if len(diffs) < 2:
                continue
            mean = sum(diffs) / len(diffs)
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
            lines.append(f"| {DATA_NAMES.get(data, data)} | {latent} | {int(n):,} | "
                         f"{len(diffs)} | {mean:+.2f} ± {sd / math.sqrt(len(diffs)):.2f} | "
                         f"{sum(d > 0 for d in diffs)} of {len(diffs)} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _copy(source: Path, target: Path, missing: list[str]) -> bool:
    if not source.is_file():
        missing.append(f"`{source}`")
        return False
    shutil.copyfile(source, target)
    return True


def _images(runs: list[Run], images: Path, kind: str) -> list[str]:
    """Copy each run's ``figures/<kind>.png`` into ``images`` and return the page's lines for
    it, a row of images per data set; missing files are listed."""
    lines: list[str] = []
    for data in dict.fromkeys(r.data for r in runs):
        shown, missing = [], []
        for r in (r for r in runs if r.data == data):
            name = (f"manifold_{data}_{r.method}.png" if kind == "manifold"
                    else f"samples_{data}_nz{r.latent}_{r.method}.png")
            if _copy(rundir.path(r.dir, "figures") / f"{kind}.png", images / name, missing):
                label = f"{METHODS[r.method]}, Nz = {r.latent}"
                shown.append(f"![{label}]({images.name}/{name})")
        lines += [f"### {DATA_NAMES.get(data, data)}", ""]
        if shown:
            lines += [" ".join(shown), ""]
        if missing:
            lines += [f"Not found (not shown): {', '.join(missing)}.", ""]
    return lines


def build_page(runs: list[Run], out: str | Path, command: str | None = None,
               notes: str | None = None, seeds: list[Run] | None = None) -> str:
    """Write the page ``out`` and its images in ``<out's dir>/reproduction/``; return the page.
    ``command`` is the command line shown as the way to rebuild it; ``notes`` (markdown, e.g. a
    discussion of the numbers written by hand) goes under "Discussion", after the figures;
    ``seeds`` (runs of further seeds) make the table of AEVB against wake-sleep at early counts
    over seeds (``seeds_table``), with the page's runs of the same seed-less key."""
    if not runs:
        raise ReproductionError("no runs to show: pass at least one run.")
    check_unique(runs)
    runs = sorted(runs, key=_order)
    out = Path(out)
    images = out.parent / "reproduction"
    images.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = shlex.join(["vae-reproduction",
                              *(str(r.dir) for r in runs), "--out", str(out)])
    lines = [
        "# Reproduction of Kingma & Welling (2013), Figure 2: AEVB vs wake-sleep", "",
        f"Generated by `{command}`; run it again to rebuild this page and its images in "
        f"`{images.name}/`.", "",
        "The bounds are the ELBO, a lower bound on log p(x), in nats per data point (higher is "
        "better), at each run's last evaluation. The paper's numbers are read by eye from its "
        "Figure 2, good to a few nats; where our run stopped at another count of training "
        "samples than the paper's, the paper column says at which count its number is.", "",
    ]
    for data in dict.fromkeys(r.data for r in runs):
        group = [r for r in runs if r.data == data]
        name = DATA_NAMES.get(data, data)
        extra = data in EXTRAS
        lines += [f"## {name}" + (" (an extra data set)" if extra else ""), ""]
        if extra:
            lines += [f"The paper did not use {name}; these runs use its MNIST setup. It has no "
                      f"{name} numbers, hence the \"—\" in the paper column.", ""]
        figure = f"figure2_{data}.png"
        figure2(group, data, images / figure)
        lines += [conditions(group), "",
                  f"![Figure 2, {name}]({images.name}/{figure})", "",
                  results_table(group),
                  "### The test bound along the curve", "",
                  "Each run's test bound at fixed counts of training samples seen, interpolated "
                  "linearly in log10(samples seen) between its evaluations, and the paper's at "
                  "the end of its curve.", "", milestones_table(group),
                  "### AEVB vs wake-sleep at equal samples seen", "",
                  "Test bounds at 1e6 and 1e7 samples where both runs reached them, and at the "
                  "largest count both reached, interpolated as above.",
                  "", equal_samples_table(group)]
    table = seeds_table([*runs, *(seeds or [])]) if seeds else ""
    if table:
        lines += ["## AEVB vs wake-sleep at early counts, over seeds", "",
                  "Where the single runs above cross early, further seeds decide: the test bound "
                  "of AEVB minus wake-sleep's at each evaluation up to 1e5 samples seen, seed by "
                  "seed (each seed's two runs share the data order), its mean and standard error "
                  "over the seeds.", "", table]
    two_d = [r for r in runs if r.latent == 2]
    lines += ["## Figure 4: learned manifolds (Nz = 2)", ""]
    lines += _images(two_d, images, "manifold") if two_d else ["No run with Nz = 2.", ""]
    lines += ["## Figure 5: samples from the prior", ""]
    lines += _images(runs, images, "samples")
    if notes:
        lines += ["## Discussion", "", notes.strip(), ""]
    page = "\n".join(lines).rstrip("\n") + "\n"
    out.write_text(page)
    return page


def _read_notes(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ReproductionError(f"--notes {path!r} cannot be read: {err.strerror}.") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-reproduction",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUNS",
                        help="a run directory, or a directory searched for curve.json files")
    parser.add_argument("--out", default="docs/reproduction.md",
                        help="the page to write; images go to <its dir>/reproduction/ "
                             "(default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", metavar="RUNS", default=[],
                        help="runs of further seeds (directories searched for curve.json): the "
                             "early-count comparison of AEVB and wake-sleep over seeds")
    parser.add_argument("--notes", metavar="FILE",
                        help="a markdown file shown under 'Discussion' (e.g. how the numbers "
                             "compare with the paper's)")
    args = parser.parse_args(argv)
    command = shlex.join(["vae-reproduction", *args.runs,
                          "--out", args.out, *(["--notes", args.notes] if args.notes else []),
                          *(["--seeds", *args.seeds] if args.seeds else [])])
    try:
        runs = find_runs(args.runs)
        notes = _read_notes(args.notes) if args.notes else None
        seeds = [load_run(f) for d in args.seeds for f in sorted(Path(d).rglob(rundir.CURVE))]
        build_page(runs, args.out, command, notes, seeds)
    except ReproductionError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"written: {args.out} ({len(runs)} runs), images in "
          f"{Path(args.out).parent / 'reproduction'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
