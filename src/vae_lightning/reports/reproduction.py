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
import shlex
import shutil
import sys
from pathlib import Path

from vae_lightning import rundir
from vae_lightning.plotting import pyplot
from vae_lightning.reports.reproduction_runs import (
    DATA_NAMES,
    METHODS,
    TEST,
    TRAIN,
    ReproductionError,
    Run,
    check_unique,
    curve_points,
    find_runs,
    left_out,
    load_run,
    page_order,
)
from vae_lightning.reports.reproduction_tables import (
    conditions,
    equal_samples_table,
    milestones_table,
    results_table,
    seeds_table,
)

COLOURS = {"aevb": "C0", "wake_sleep": "C3"}
EXTRAS = {"fashion_mnist"}  # data sets the paper did not use: run with its MNIST setup

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
                seen, values = curve_points(run.points, key)
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
               notes: str | None = None, seeds: list[Run] | None = None,
               missing: list[tuple[Path, str]] = ()) -> str:
    """Write the page ``out`` and its images in ``<out's dir>/reproduction/``; return the page.
    ``command`` is the command line shown as the way to rebuild it; ``notes`` (markdown, e.g. a
    discussion of the numbers written by hand) goes under "Discussion", after the figures;
    ``seeds`` (runs of further seeds) make the table of AEVB against wake-sleep at early counts
    over seeds (``seeds_table``), with the page's runs of the same seed-less key. ``missing``:
    the jobs found without a curve (``left_out``), named after the intro."""
    if not runs:
        raise ReproductionError("no runs to show: pass at least one run.")
    check_unique(runs)
    runs = sorted(runs, key=page_order)
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
    if missing:
        lines += ["Not on this page: " + ", ".join(f"`{d}` ({status})" for d, status in missing)
                  + ", jobs that ended without a curve (before their first evaluation: see "
                  "each one's results.json).", ""]
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
        missing = left_out(args.runs)
        build_page(runs, args.out, command, notes, seeds, missing)
    except ReproductionError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"written: {args.out} ({len(runs)} runs), images in "
          f"{Path(args.out).parent / 'reproduction'}"
          + (f"; not on it, ended without a curve: {', '.join(str(d) for d, _ in missing)}"
             if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
