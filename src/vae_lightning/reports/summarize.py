"""Summarize a sweep: vae-summarize multirun/<date>/<time> (or python -m
vae_lightning.reports.summarize) tabulates the results of its jobs.

It reads every job's results.json under the directory (<dir>/<job number>/results.json), each
with its status, tags and conditions (a job that did not complete is listed under the table with
its message and left out of the plot), writes summary.md (a markdown table), summary.csv and
summary.png (the bound on the training and test data against the latent size) into the
directory, and prints the table. The training-set bound is shown when the results carry one
(train/elbo). Where a job has been evaluated by vae-eval (an eval.json beside its results.json,
the newest evaluation), its importance-weighted log p(x) is shown too: eval/iw and its standard
error, with the checkpoint, split, k and number of points it was computed on, and eval/ais where the
evaluation ran AIS, the bound under a prior fitted after training (eval.fitted_prior: a
VQ-VAE's PixelCNN) and the sample-quality scores (FID, KID, precision, recall); so that families
compared one run each are compared by log p(x), not only by their ELBO. Rows whose estimates
were computed at another k, n or split than the others' are named under the table.

Jobs that differ only in their seed are also summarized by setting (mean, standard deviation
and number of seeds of each bound) in a second table, when any setting ran more than one seed.
``--sort <column>`` orders the rows best first by a bound or a score (lowest first for FID and
KID).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from functools import partial
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from vae_lightning import rundir
from vae_lightning.plotting import pyplot
from vae_lightning.reports import json_files
from vae_lightning.reports.json_files import dotted, finite, optional, strings, text, whole

CONDITIONS = ("status", "tags", "data", "latent", "likelihood", "prior", "posterior", "objective",
              "bound_of", "seed", "epochs", "train_samples_seen")
METRICS = ("train/elbo", "val/elbo", "test/elbo", "test/recon", "test/kl")
# The bound on training points at the end of training (curve.json's last point, the model
# test/elbo is of): train/elbo is the mean over the last epoch's minibatches as they were
# trained, which in a run of a few epochs averages from the untrained model on and lies far
# below the test bound (newcomer walkthrough eight: -208 against -183 nats, where this is -181).
TRAIN_END = "train/end"
SHOWN = ("train/elbo", TRAIN_END, *METRICS[1:])  # the table's order
MODEL = ("data", "likelihood", "prior", "posterior", "objective")  # a line each in the plot
TRAIN_LOG = "train.log"  # a training job's log (conf/train.yaml's hydra.job.name: train)
# vae-eval's estimates, from a job's eval.json: column -> (the eval.json key, dotted)
EVALUATION = {"eval/checkpoint": "checkpoint", "eval/split": "split", "eval/k": "k",
              "eval/n": "n", "eval/iw": "iw.nats", "eval/iw_se": "iw.nats_se",
              "eval/ais": "ais.nats", "eval/ais_se": "ais.nats_se", "eval/bound_of": "bound_of",
              "eval/fitted_prior": "fitted_prior.sampler",
              "eval/fitted_elbo": "fitted_prior.elbo.nats",
              "eval/fitted_elbo_se": "fitted_prior.elbo.nats_se",
              "eval/fid": "sample_quality.fid", "eval/kid": "sample_quality.kid.mean",
              "eval/precision": "sample_quality.precision",
              "eval/recall": "sample_quality.recall"}
# What the sample-quality scores were computed with (no column: a note names the jobs of each
# where they differ, ``unlike_evaluations``): scores in another feature space (another
# classifier, or Inception) or from other numbers of images are not comparable (FID's bias
# falls as the number of samples grows).
QUALITY_SETTINGS = {"features": "sample_quality.features",
                    "network": ("sample_quality.classifier", "sample_quality.inception_weights"),
                    "generated": "sample_quality.generated", "real": "sample_quality.real"}
SCORES = ("eval/fid", "eval/kid", "eval/precision", "eval/recall")
# The columns --sort orders best first: the highest first, but for these (distances).
LOWER_IS_BETTER = ("eval/fid", "eval/kid")
# The bounds the table by setting averages over seeds.
AVERAGED = ("test/elbo", "eval/iw", "eval/ais", "eval/fitted_elbo")


class SummaryError(ValueError):
    """Nothing to summarize, or a results.json the summary cannot show (exit code 2)."""


def _job_key(path: Path, root: Path) -> tuple:
    parts = path.parent.relative_to(root).parts
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _results_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Every ``results.json`` under ``root``, through symbolic links to folders too (a folder
    of links to runs kept elsewhere: ``Path.glob('**')`` follows none, and such a folder was
    'no results.json', a sweep with a linked job a table without it), each real folder read
    once (a link back up the tree is not followed round); and the training jobs' folders that
    hold none (their log, ``TRAIN_LOG``, or checkpoints, but no results.json: a job still
    running, or killed outright, by SIGKILL or the OOM killer, before writing it)."""
    found, unrecorded, seen = [], [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        if rundir.RESULTS in names:
            found.append(Path(folder) / rundir.RESULTS)
        elif TRAIN_LOG in names or rundir.CHECKPOINTS in subfolders:
            unrecorded.append(Path(folder))
    return found, unrecorded


def load_results(root: Path) -> list[dict[str, Any]]:
    """One row per ``results.json`` under ``root``, with its job (path relative to ``root``)."""
    if root.is_file():  # "no results.json under .../results.json" said the opposite of the case
        run = root.resolve().parent if root.is_symlink() else root.parent  # a link's target's
        raise SummaryError(f"{str(root)!r} is a file: give the folder that holds the runs (a "
                           f"sweep directory, or one run's: {str(run)!r}).")
    paths = sorted(_results_files(root)[0], key=lambda p: _job_key(p, root))
    if not paths:
        raise SummaryError(f"no results.json under {str(root)!r}: point at a sweep directory "
                           "such as multirun/<date>/<time>.")
    # The job last: a results.json's own "job" key took the column's place (another job's name).
    rows = [{**results, **read_curve_end(path.parent / rundir.CURVE, results),
             **read_evaluation(path.parent / rundir.EVAL),
             "job": path.parent.relative_to(root).as_posix()}
            for path in paths for results in [read_results(path)]]
    return sorted(rows, key=lambda r: (r.get("latent") is None, r.get("latent") or 0))


# What the summary reads of a results.json, beyond printing it: each key's test and, in words,
# what it accepts (train.py writes them; strict JSON, a non-finite bound null).
READ = {
    "latent": (optional(partial(whole, least=1)), "an integer >= 1 or null"),
    "status": (optional(text), "a string (completed, ...) or null"),
    "tags": (optional(strings), "a list of strings or null"),
    "overrides": (optional(strings), "a list of strings or null"),
    "bound_of": (optional(text), "what the bounds bound, a string, or null"),
    # The table by setting counts each setting's distinct seeds (a set): a list was a TypeError
    # traceback (unhashable), and true the seed 1.
    "seed": (optional(partial(whole, least=-2**63)), "an integer or null"),
    **{key: (optional(finite), "a finite number or null") for key in METRICS},
}


def read_results(path: Path) -> dict[str, Any]:
    """A job's ``results.json``, refused (``SummaryError``: one message naming the file, the
    key, its value and what is accepted) where the summary could not show it."""
    results = json_files.read_object(path, "the job's results.json",
                                     "mend it or move the job away, and summarize again",
                                     SummaryError, READ)
    # A column only where a bound is not of log p(x) (a conditional model's log p(x|y), given
    # the label, is no rival to the others'), in its first words.
    bound = results.pop("bound_of", None)
    if bound is not None and bound != "log p(x)":
        results["bound_of"] = bound.split(",")[0]
    return results


def read_curve_end(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """``{TRAIN_END: the training bound}`` of a job's ``curve.json`` whose last point is at the
    end of its training (its samples seen those of ``results``); none without one. A file that
    cannot be read is refused as a results.json is (``SummaryError``)."""
    if not path.exists():
        return {}
    found = json_files.read_object(path, "the job's curve.json (the bound along training)",
                                   "mend it or move it away, and summarize again",
                                   SummaryError, READ_CURVE)
    points = found.get("points") or []
    last = points[-1] if points and isinstance(points[-1], dict) else {}
    value, seen = last.get("train/elbo"), last.get("samples_seen")
    if not finite(value) or seen != results.get("train_samples_seen", seen):
        return {}
    return {TRAIN_END: value}


READ_CURVE = {"points": (optional(lambda value: isinstance(value, list)), "a list of points")}



# What the summary reads of an eval.json (vae-eval writes it; the estimates may be null where
# there was a single point, or no discrete data for bits/dim, which is not read).
READ_EVAL = {
    "checkpoint": (optional(text), "the evaluated checkpoint's path, a string, or null"),
    "bound_of": (optional(text), "what the estimates bound, a string, or null"),
    "split": (text, "a string (test, val, ...)"),
    "k": (partial(whole, least=1), "an integer >= 1"),
    "n": (partial(whole, least=0), "an integer >= 0"),
    **json_files.estimate("iw"),
    **json_files.estimate("ais", "the AIS estimate (nats, nats_se)", nullable=True),
    "fitted_prior": (optional(json_files.mapping),
                     "an object with the sampler and its bound (elbo), or null"),
    "fitted_prior.sampler": (optional(text), "the fitted prior's name, a string, or null"),
    **json_files.estimate("fitted_prior.elbo", "the bound (nats, nats_se)", nullable=True),
    "sample_quality": (optional(json_files.mapping), "an object with the scores or null"),
    "sample_quality.fid": (optional(finite), "a finite number or null"),
    "sample_quality.kid": (optional(json_files.mapping),
                           "an object with the score (mean, std) or null"),
    "sample_quality.kid.mean": (optional(finite), "a finite number or null"),
    "sample_quality.precision": (optional(finite), "a finite number or null"),
    "sample_quality.recall": (optional(finite), "a finite number or null"),
    "sample_quality.features": (optional(text), "a string (classifier, inception) or null"),
    "sample_quality.classifier": (optional(text), "the classifier's path, a string, or null"),
    "sample_quality.inception_weights": (optional(text), "a path, a string, or null"),
    "sample_quality.generated": (optional(whole), "an integer >= 0 or null"),
    "sample_quality.real": (optional(whole), "an integer >= 0 or null"),
}


def read_evaluation(path: Path) -> dict[str, Any]:
    """The ``EVALUATION`` columns of a job's ``eval.json`` (none where there is none), refused
    (``SummaryError``) where the summary could not show it."""
    if not path.exists():
        return {}
    found = json_files.read_object(path, "the job's eval.json (vae-eval's)",
                                   "mend it or move it away, and summarize again", SummaryError,
                                   READ_EVAL, required=("split", "k", "n", "iw"))
    columns = {}
    for column, key in EVALUATION.items():
        node = dotted(found, key)
        if column == "eval/bound_of" and node == "log p(x)":
            continue  # said only where it is not (a conditional model's log p(x|y))
        if node is not None:
            columns[column] = Path(node).name if column == "eval/checkpoint" else node
    if isinstance(found.get("sample_quality"), dict):  # for the note on unlike scores
        columns["quality_settings"] = tuple(
            next((dotted(found, k) for k in key if dotted(found, k) is not None), None)
            if isinstance(key, tuple) else dotted(found, key)
            for key in QUALITY_SETTINGS.values())
    return columns


def _settings(row: dict[str, Any]) -> dict[str, str]:
    """A job's command-line overrides as ``{key: value}`` (``+``/``++`` dropped)."""
    pairs = (item.split("=", 1) for item in row.get("overrides") or [] if "=" in item)
    return {key.lstrip("+"): value for key, value in pairs}


# Overrides that change no number the table shows (how a run is watched or logged, where its
# figures go): no column of their own, even where the jobs differ in them (a newcomer's single
# runs compared gave 44 columns, the numbers from the 34th on).
INERT = ("logger", "hydra.", "extras.", "callbacks.figures", "callbacks.bound_curve",
         "callbacks.config_tree", "callbacks.rich", "trainer.enable_progress_bar",
         "trainer.enable_model_summary", "trainer.log_every_n_steps", "data.num_workers")


def _inert(key: str) -> bool:
    return any(key == prefix or key.startswith((f"{prefix}.", f"{prefix}/"))
               or (prefix.endswith(".") and key.startswith(prefix)) for prefix in INERT)


def swept(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys whose values differ between the jobs (a sweep's axes: ``-m
    model.objective.beta=1,4``, an Optuna search's parameters), in first-seen order, less those
    a condition column already shows value for value (``model.latent`` is ``latent``) and those
    that change no number shown (``INERT``)."""
    settings = [_settings(row) for row in rows]
    keys = dict.fromkeys(key for setting in settings for key in setting)
    differ = [key for key in keys if len({setting.get(key) for setting in settings}) > 1]
    shown = [[_cell(row.get(c)) for row in rows] for c in CONDITIONS]

    def named(key: str) -> bool:
        """Whether the condition column of the key's name (``model.latent``: latent,
        ``model/likelihood``: likelihood) shows its value in every job that sets it (the
        others ran the default, which that column shows too: single runs compared)."""
        name = re.split(r"[./]", key)[-1]
        return name in CONDITIONS and all(setting[key] == _cell(row.get(name))
                                          for setting, row in zip(settings, rows) if key in setting)

    return [key for key in differ if key not in ("job", *CONDITIONS, *METRICS, *EVALUATION)
            and not _inert(key)
            and [setting.get(key, "") for setting in settings] not in shown and not named(key)]


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The job, the conditions, the swept keys, the metrics and vae-eval's estimates that any
    row has, in a fixed order."""
    present = {key for row in rows for key in row}
    return (["job"] + [key for key in CONDITIONS if key in present] + swept(rows)
            + [key for key in (*SHOWN, *EVALUATION) if key in present])


def _with_settings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its swept keys' values as cells (where it has no key of its own so named)."""
    keys = swept(rows)
    return [{**{key: _settings(row).get(key) for key in keys}, **row} for row in rows]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # tags
        return ", ".join(map(str, value))
    if isinstance(value, str) and any(c in value for c in ".eE"):  # a swept value: 4 digits
        try:
            return f"{float(value):.4g}"
        except ValueError:
            return value
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def failures(rows: list[dict[str, Any]]) -> str:
    """A line per job that did not complete: its status, overrides and message."""
    lines = [f"- job {row['job']}: {row.get('status')}"
             + (f" ({' '.join(row['overrides'])})" if row.get("overrides") else "")
             + f": {row.get('message', '')}"
             for row in rows if not _completed(row)]
    return ("\nFailed jobs:\n" + "\n".join(lines) + "\n") if lines else ""


def unrecorded(root: Path) -> str:
    """A note naming the training jobs under ``root`` without a results.json (``_results_files``),
    which the table cannot show: a job killed outright was left out without a word."""
    jobs = sorted(_results_files(root)[1], key=lambda p: _job_key(p / rundir.RESULTS, root))
    if not jobs:
        return ""
    names = ", ".join(job.relative_to(root).as_posix() for job in jobs)
    return (f"\nJobs without a results.json (still running, or killed before they wrote one: "
            f"SIGKILL, the OOM killer, a machine's end; see each one's {TRAIN_LOG}), not in the "
            f"table: {names}.\n")


def _row(cells: Any) -> str:
    """A markdown table's row, a pipe in a cell escaped (log p(x|y), a tag, a job's folder): it
    would end the cell and shift the row's columns."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = [_row(cols), "|" + " --- |" * len(cols)]
    lines += [_row(_cell(row.get(c)) for c in cols) for row in rows]
    return "\n".join(lines) + "\n"


def _completed(row: dict[str, Any]) -> bool:
    return row.get("status", "completed") == "completed"


def _grouping(rows: list[dict[str, Any]], latent: bool = False) -> tuple[list[str], Any]:
    """The keys that tell the jobs' settings apart (the model's parts that differ, ``MODEL``,
    the latent size where ``latent`` and it differs, and the swept keys but the latent size and
    the seed) and a function giving a job's setting: jobs of one setting differ only in their
    seed (and, without ``latent``, in their latent size: the plot's axis)."""
    parts = [key for key in (*MODEL, *(["latent"] if latent else []))
             if len({_cell(r.get(key)) for r in rows}) > 1]
    keys = [key for key in swept(rows) if key not in ("model.latent", "seed")]

    def setting(row: dict[str, Any]) -> tuple:
        return (*(_cell(row.get(k)) for k in parts), *(_settings(row).get(k) for k in keys))

    return [*parts, *keys], setting


def _named(names: list[str], group: tuple, first: str = "") -> str:
    """A setting in words: its keys' values, those it does not set (None) left out."""
    return ", ".join(([first] if first else [])
                     + [f"{k}={_cell(v)}" for k, v in zip(names, group) if v is not None])


SERIES = (("test/elbo", "test ELBO"), ("eval/iw", "test log p(x), IW estimate"),
          ("eval/fitted_elbo", "test ELBO, prior fitted after training"))


def _iw_label(rows: list[dict[str, Any]], label: str) -> str:
    """``label`` of vae-eval's IW estimate with its k (``eval/k``) and points (``eval/n``)
    where every job evaluated has the same, else a pointer to the table: a figure lifted into a
    paper says which bound it draws."""
    evaluated = [r for r in rows if r.get("eval/iw") is not None]
    ks = {r.get("eval/k") for r in evaluated}
    ns = {r.get("eval/n") for r in evaluated}
    if len(ks) == 1 and len(ns) == 1 and None not in ks | ns:
        return f"{label} (k = {ks.pop()}, {ns.pop():,} points)"
    return f"{label} (k and points differ: the table)" if evaluated else label


def _train_series(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The training bound a plot draws, and what its label adds: at the end of training
    (``TRAIN_END``) where every job that has a training bound has it, else the running mean as
    trained."""
    trained = [r for r in rows if r.get("train/elbo") is not None or r.get(TRAIN_END) is not None]
    if trained and all(r.get(TRAIN_END) is not None for r in trained):
        return TRAIN_END, ""
    return "train/elbo", " (mean while training)"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """The bound (train and test, where present) against the latent size, one point per
    completed job and a line through the mean at each latent size, one line per setting of the
    other swept keys and of the model's parts that differ between the jobs (``MODEL``): jobs of
    different models or settings are not averaged together; jobs that differ only in their
    seed are. Jobs of several settings none of which ran several latent sizes (families
    compared, each at its own size) are drawn a row per setting instead: the bounds and
    vae-eval's log p(x) of each, its seeds' mean marked."""
    plt = pyplot()
    names, setting = _grouping(rows)
    done = [r for r in rows if _completed(r)]
    groups = list(dict.fromkeys(setting(r) for r in done))
    curves = any(len({r.get("latent") for r in done if setting(r) == g}) > 1 for g in groups)
    if not curves and len(groups) > 1:  # no setting ran several latent sizes: no curve to draw
        _plot_settings(plt, done, names, setting, groups, path)
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = set()
    train, how = _train_series(done)
    for key, label in ((train, f"train{how}"), ("test/elbo", "test"),
                       ("eval/iw", _iw_label(done, "test log p(x), IW"))):
        for group in groups:
            points = [(r["latent"], r[key]) for r in done
                      if r.get(key) is not None and "latent" in r and setting(r) == group]
            if not points:
                continue
            latents = sorted({latent for latent, _ in points})
            means = [mean(v for n, v in points if n == latent) for latent in latents]
            (line,) = ax.plot(latents, means, marker="o", label=_named(names, group, label))
            ax.scatter(*zip(*points), color=line.get_color(), s=12, alpha=0.5)
            ticks |= set(latents)
    if ticks:
        ax.set_xticks(sorted(ticks), [str(n) for n in sorted(ticks)])
    ax.set_xlabel("latent size Nz")
    ax.set_ylabel("bound (nats per data point)")
    ax.grid(True, alpha=0.3)
    if 0 < len(ax.get_lines()) <= 12:  # beyond, a search of many settings: the points speak
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_settings(plt: Any, rows: list[dict[str, Any]], names: list[str], setting: Any,
                   groups: list[tuple], path: Path) -> None:
    """A row per setting (labelled by the keys that tell them apart), its bounds along x: a
    point per job and the seeds' mean, a marker per bound (``SERIES``), the legend below."""
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.45 * len(groups)))
    rows_at = {group: i for i, group in enumerate(groups)}
    train, how = _train_series(rows)
    series = [(key, _iw_label(rows, label) if key == "eval/iw" else label)
              for key, label in SERIES]
    for key, label in ((train, f"train ELBO{how}"), *series):
        points = [(r[key], rows_at[setting(r)]) for r in rows if r.get(key) is not None]
        if not points:
            continue
        means = [mean(v for v, y in points if y == i) for i in range(len(groups))
                 if any(y == i for _, y in points)]
        ys = [i for i in range(len(groups)) if any(y == i for _, y in points)]
        (line,) = ax.plot(means, ys, marker="o", linestyle="none", label=label)
        ax.scatter(*zip(*points), color=line.get_color(), s=12, alpha=0.5)
    jobs = {group: [r["job"] for r in rows if setting(r) == group] for group in groups}
    # A setting of one job whose folder has a name of its own (runs compared): that name.
    labels = [jobs[g][0] if len(jobs[g]) == 1 and not jobs[g][0].isdigit()
              else _named(names, g) or "(all)" for g in groups]
    ax.set_yticks(range(len(groups)), labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("nats per data point (higher is better)")
    ax.grid(True, axis="x", alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(
            groups) < 4 else -0.12), ncol=len(ax.get_lines()), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def by_setting(rows: list[dict[str, Any]]) -> str:
    """The jobs of each setting (``_grouping``) summarized over their seeds: the mean, standard
    deviation and number of completed jobs of each bound (``AVERAGED``); empty where no
    setting ran more than one job (the table above says it all)."""
    names, setting = _grouping(rows, latent=True)
    done = [r for r in rows if _completed(r)]
    groups = list(dict.fromkeys(setting(r) for r in done))
    if all(sum(setting(r) == g for r in done) < 2 for g in groups):
        return ""
    present = [key for key in AVERAGED if any(r.get(key) is not None for r in done)]
    lines = [_row([*(names or ["setting"]), *present]),
             "|" + " --- |" * (max(len(names), 1) + len(present))]
    for group in groups:
        cells = [_cell(value) for value in group] if names else ["all jobs"]
        for key in present:
            values = [r[key] for r in done if setting(r) == group and r.get(key) is not None]
            spread = f" ± {stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{mean(values):.2f}{spread} (n={len(values)})" if values else "")
        lines.append(_row(cells))
    # Jobs of one setting and one seed are repeats: their spread is not the seeds' (newcomer
    # walkthrough eight: a run made twice stood as "over the seeds").
    seeds = [[r.get("seed") for r in done if setting(r) == g] for g in groups]
    over = ("the seeds" if all(len(set(s)) == len(s) for s in seeds) else
            "the jobs; some of one setting share a seed, so their spread is not only the seeds'")
    return (f"\nBy setting, over {over} (mean ± standard deviation, n jobs):\n\n"
            + "\n".join(lines) + "\n")


def unlike_evaluations(rows: list[dict[str, Any]]) -> str:
    """A note naming the jobs whose vae-eval estimates were computed at another k, number of
    points or split than the others' (a newer vae-eval of some jobs, e.g. with FID at a small
    k, replaces their eval.json): their eval/iw are not alike; and one naming the jobs whose
    sample-quality scores were computed in another feature space or from other numbers of
    images (``QUALITY_SETTINGS``); empty where all are alike."""
    found: dict[tuple, list[str]] = {}
    for row in rows:
        if row.get("eval/iw") is not None:
            found.setdefault((row.get("eval/k"), row.get("eval/n"), row.get("eval/split")),
                             []).append(row["job"])
    note = ""
    if len(found) > 1:
        kinds = "; ".join(f"k={k}, n={n}, {split}: jobs {', '.join(jobs)}"
                          for (k, n, split), jobs in found.items())
        note += (f"\nNote: the jobs' eval/iw were computed alike only within each group "
                 f"({kinds}); estimates at another k or on other points are not comparable: "
                 "evaluate them alike (vae-eval with the same eval.k, eval.limit and "
                 "eval.split).\n")
    scored: dict[tuple, list[str]] = {}
    for row in rows:
        if any(row.get(score) is not None for score in SCORES):
            # A score is read from eval.json's sample_quality: its settings are read too.
            scored.setdefault(row["quality_settings"], []).append(row["job"])
    if len(scored) > 1:
        kinds = "; ".join(
            f"{features} features{f' ({Path(network).name})' if network else ''}, "
            f"{generated} samples against {real} images: jobs {', '.join(jobs)}"
            for (features, network, generated, real), jobs in scored.items())
        note += (f"\nNote: the jobs' sample-quality scores ({', '.join(SCORES)}) were computed "
                 f"alike only within each group ({kinds}); scores in another feature space or "
                 "from other numbers of images are not comparable (FID's bias falls as the "
                 "number of samples grows): evaluate them alike (vae-eval with the same "
                 "eval.features, eval.classifier or eval.inception_weights, and eval.samples)."
                 "\n")
    return note


def sort_rows(rows: list[dict[str, Any]], column: str, cols: list[str]) -> list[dict[str, Any]]:
    """``rows`` ordered by ``column`` best first (the highest bound or score; the lowest FID or
    KID, ``LOWER_IS_BETTER``), the rows without a value last; ``SummaryError`` for a column the
    table does not have."""
    if column not in cols:
        raise SummaryError(f"--sort {column}: the table has no such column; its columns: "
                           f"{', '.join(cols)}.")
    sign = 1 if column in LOWER_IS_BETTER else -1

    def key(row: dict[str, Any]) -> tuple:
        value = row.get(column)
        if value is None or value == "":
            return (2, 0, "")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, sign * value, "")
        return (1, 0, _cell(value))  # a text column (a swept key's values): in text order

    return sorted(rows, key=key)


def summarize(root: str | Path, sort: str | None = None) -> str:
    """Write summary.md, summary.csv and summary.png into ``root``; return the markdown table
    (with the table by setting and the notes under it). ``sort``: a column to order the rows by,
    best first (``sort_rows``)."""
    root = Path(root)
    rows = _with_settings(load_results(root))
    cols = columns(rows)
    if sort:
        rows = sort_rows(rows, sort, cols)
    table = (markdown(rows, cols) + failures(rows) + unrecorded(root) + unlike_evaluations(rows)
             + by_setting(rows))
    (root / "summary.md").write_text(f"# Sweep {root}\n\n" + table)
    with open(root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: ", ".join(map(str, value)) if isinstance(value, list) else value
                          for key, value in row.items()} for row in rows)
    plot(rows, root / "summary.png")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="a multirun directory, e.g. multirun/<date>/<time>")
    parser.add_argument("--sort", metavar="COLUMN",
                        help="order the rows by this column, best first (e.g. eval/iw, "
                             "test/elbo; the lowest first for eval/fid and eval/kid)")
    args = parser.parse_args(argv)
    try:
        print(summarize(args.sweep_dir, args.sort), end="")
    except SummaryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"written: {Path(args.sweep_dir) / 'summary.md'}, summary.csv, summary.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
