"""The benchmark table: every model family under one protocol, beside the papers' and pythae's
numbers (``docs/benchmark.md``).

A row is a preset ``conf/experiment/bench/<row>.yaml`` on the shared protocol
(``bench/_common.yaml``: dynamically binarized MNIST, one optimizer, 1e7 training samples;
``bench/_protocol.yaml`` adds the one network every row but the convolutional hierarchy's takes)
that changes only what the row is about, with a ``benchmark`` node naming the row, its
config and the values the literature reports. ``vae-bench run <row>`` trains it (resuming a run
it finds unfinished), evaluates the final model with ``vae-eval`` (k = 5000 on all 10,000 test
images) and writes the row's record; ``vae-bench page`` builds the page from the records;
``vae-bench list`` names the rows.

    vae-bench run vae iwae_k5        # runs in benchmarks/bench/<row>, records in docs/benchmark/
    vae-bench run --missing          # the rows without a record (resumable; one process a core)
    vae-bench page                   # docs/benchmark.md, and the table in README.md
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vae_lightning import rundir
from vae_lightning.errors import ConfigError, DataError, UnwritableError, UserError
from vae_lightning.files import writable_directory
from vae_lightning.reports import json_files
from vae_lightning.reports.json_files import NATS, finite, nats, optional, text, whole

RUNS, RECORDS, PAGE = Path("benchmarks/bench"), Path("docs/benchmark/records"), Path(
    "docs/benchmark.md")
LONG = Path("benchmarks/long")  # the full-length runs (benchmarks/long/run.sh)
# The README's summary of the records, rewritten by `vae-bench page` between these two lines.
README = Path("README.md")
BEGIN, END = "<!-- bench table: vae-bench page writes it from docs/benchmark/records -->", \
    "<!-- end of bench table -->"
COMMAND = "import sys; from vae_lightning.cli import {0}; sys.argv[0] = 'vae-{0}'; {0}()"
# The protocol's evaluation: k importance samples on all of MNIST's test images.
K, TEST_IMAGES = 5000, 10_000


def rows() -> dict[str, dict[str, Any]]:
    """Each row's name and its ``benchmark`` node, from the shipped presets."""
    folder = resources.files("vae_lightning.conf").joinpath("experiment", "bench")
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml") and not entry.name.startswith("_"):
            node = OmegaConf.create(entry.read_text()).get("benchmark", {})
            found[entry.name[:-5]] = OmegaConf.to_container(node)
    return found


def _protocol_file() -> Any:
    """``bench/_common.yaml``, the settings every row shares, as written (not composed)."""
    entry = resources.files("vae_lightning.conf").joinpath("experiment", "bench", "_common.yaml")
    return OmegaConf.create(entry.read_text())


def _protocol_node() -> Any:
    """The ``benchmark`` node of ``bench/_common.yaml``: the protocol in words, and the
    options that have no row, with why (``not_rows``)."""
    return _protocol_file().benchmark


def _protocol() -> str:
    return str(_protocol_node().protocol)


def _off_protocol(record: dict[str, Any]) -> str:
    """What in ``record`` falls short of the protocol (fewer importance samples, test images or
    training samples, e.g. a quick ``vae-bench run -k 10``), in words; "" when nothing does (or
    the record does not say). The page shows such a number unbolded, with these words."""
    samples = float(_protocol_file().trainer.max_samples)
    changed = [f"{option} {item}" for option, key in (("--override", "overrides"),
                                                       ("--eval-override", "eval_overrides"))
               for item in record.get(key) or [] if _changes_protocol(item, record.get("row"))]
    short = [f"k = {record['k']}" if whole(record.get("k")) and record["k"] < K else "",
             f"{record['n']:,} test images" if whole(record.get("n")) and record["n"] < TEST_IMAGES
             else "",
             f"{_samples(record['train_samples_seen'])} training samples"
             if finite(record.get("train_samples_seen")) and record["train_samples_seen"] < samples
             else "", *changed]
    return ", ".join(word for word in short if word)


# Overrides that leave a row's numbers those of the protocol: where it runs and what it logs,
# how the evaluation is split into passes, where its data are read from (checked against the
# checkpoint's), what it adds beside the bounds; and the lengths whose effect the record states
# itself (its samples seen, its test images: shorter is off protocol, longer is allowed).
NEUTRAL = ("hydra", "logger", "trainer.accelerator", "trainer.max_samples", "eval.chunk",
           "eval.device", "eval.max_hours", "eval.data_root", "eval.data_path", "eval.trusted",
           "eval.limit", "eval.sample_quality", "eval.metrics", "eval.metric_seeds",
           # the options of what it adds beside the bounds (the sample quality, the metrics)
           "eval.samples", "eval.sample_mean", "eval.features", "eval.classifier",
           "eval.inception_weights", "eval.kid_subsets", "eval.kid_subset_size",
           "eval.nearest_k", "eval.metric_options",
           # the trainer options that set its accelerator alone (conf/trainer/<option>.yaml)
           "trainer=cpu", "trainer=gpu", "trainer=mps")


def _changes_protocol(item: str, row: str) -> bool:
    """Whether an override of a record's run (``key=value``) changes the protocol: any but the
    row's own ``experiment=bench/<row>`` and the ``NEUTRAL`` keys (and whole overrides,
    ``trainer=gpu``) does (a model, an optimizer, a batch size: the row is then not the one the
    page names)."""
    if item == f"experiment=bench/{row}":
        return False
    key = item.split("=", 1)[0].lstrip("+~")
    return not any(key == name or key.startswith(name + ".") or key.startswith(name + "/")
                   or item.lstrip("+~") == name for name in NEUTRAL)


def _iw(record: dict[str, Any]) -> str:
    """The row's log p(x) ± its standard error: bold on the protocol, else plain and marked."""
    value = f"{record['iw']['nats']:.2f} ± {_nats(record['iw'].get('nats_se'))}"
    off = _off_protocol(record)
    return f"{value} (off protocol: {off})" if off else f"**{value}**"


def not_rows() -> list[dict[str, Any]]:
    """The options (``group=option``) that have no row, each group of them with the reason."""
    return OmegaConf.to_container(_protocol_node().get("not_rows") or [])


def _refuse_unknown(names: list[str], known: dict[str, Any]) -> None:
    """Bad input (exit code 2, before any row trains), not the code 1 of a failed row."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"no benchmark row {', '.join(map(repr, unknown))}; the rows: "
                          f"{', '.join(known)}.")


class Busy(SystemExit):
    """Another vae-bench process is running the row."""


# The locks this process holds (``_row_lock``), passed on to the row's commands (``_run``): a
# lock lasts while any process holds its open file, so a vae-bench killed outright (SIGKILL,
# the OOM killer) leaves the row held by its training or evaluation, which goes on, rather than
# free for another ``vae-bench run`` to train into the same folder at the same time.
_HELD: list[int] = []


@contextlib.contextmanager
def _row_lock(log: Path, row: str) -> Iterator[None]:
    """Hold the row for this process while it trains and evaluates it: an exclusive lock on the
    row's log, which the system releases when the process and the row's command (which holds it
    too: ``_HELD``) have ended, however they end, so that several ``vae-bench run --missing``
    processes (one a core) share the rows without a stale lock."""
    with open(log, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"row {row} is being run by another vae-bench process, or by the "
                       f"training or evaluation of one that was killed (it holds the lock on "
                       f"{log})") from None
        _HELD.append(handle.fileno())
        try:
            yield
        finally:
            _HELD.remove(handle.fileno())


class Stopped(SystemExit):
    """A signal stopped a row's command, which saved its state: ``vae-bench`` ends (with
    ``--missing`` too, instead of going on to the next row) with the command's exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message


SIGNALLED = {130: "SIGINT (Ctrl-C)", 143: "SIGTERM"}  # the commands' exit codes for a signal


def _run(command: str, args: list[str], log: Path) -> int:
    """Run ``vae-<command> <args>`` in a new Python, its output appended to ``log``; its exit
    code. While it runs, SIGTERM sent here (a scheduler's, ``kill``) is passed on to it, and a
    terminal's Ctrl-C, which reaches it too (the same process group), is left to it: it saves
    its state and ends, and this process waits for it, rather than dying of SIGTERM and leaving
    it to train on, or killing it mid-write on Ctrl-C as ``subprocess.call`` does."""
    with open(log, "a") as out:
        child = subprocess.Popen([sys.executable, "-c", COMMAND.format(command), *args],
                                 stdout=out, stderr=subprocess.STDOUT, pass_fds=tuple(_HELD))

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check(code: int, what: str, row: str, log: Path, ok: tuple[int, ...] = (0,)) -> None:
    """End the row unless the command's exit code is one of ``ok``: a signal ends vae-bench
    (``Stopped``), any other code the row."""
    if code in SIGNALLED:
        raise Stopped(f"error: Stopped by {SIGNALLED[code]} while {what} row {row}; its state is "
                      f"saved (see {log}). Run the same vae-bench command again to go on.", code)
    if code not in ok:
        raise SystemExit(f"error: {what} row {row} ended with exit code {code}; see {log}")


def run(row: str, runs: Path = RUNS, records: Path = RECORDS, k: int = K,
        overrides: list[str] | None = None, eval_overrides: list[str] | None = None) -> Path:
    """Train the row (or go on with its unfinished run), evaluate its final model and write its
    record; return the record's path."""
    known = rows()
    _refuse_unknown([row], known)
    directory = runs / row
    args = [f"experiment=bench/{row}", *(overrides or [])]
    log = runs / f"{row}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with _row_lock(log, row):
        return _train_evaluate_record(row, known[row], directory, args, log, records, k,
                                      eval_overrides)


def _train_evaluate_record(row: str, bench: dict[str, Any], directory: Path, args: list[str],
                           log: Path, records: Path, k: int,
                           eval_overrides: list[str] | None) -> Path:
    last = rundir.last_checkpoint(directory)
    results_file = rundir.path(directory, "results")
    if not results_file.is_file() or _results(results_file, row, directory).get(
            "status") == "interrupted":
        resume = [f"ckpt_path={last}"] if last.is_file() else [f"hydra.run.dir={directory}"]
        # Hours of training write to the log only: say where, and what goes on.
        print(f"vae-bench: row {row}: {'going on with' if last.is_file() else 'starting'} its "
              f"training (log: {log})", file=sys.stderr, flush=True)
        # The log is a file: Lightning's progress bar would fill it with carriage returns.
        code = _run("train", [*args, *resume, "trainer.enable_progress_bar=false"], log)
        _check(code, "training", row, log, ok=(0, 4))  # 4: diverged, a result too
    results = _results(results_file, row, directory)
    if results.get("status") not in ("completed", "diverged"):  # nothing trained to evaluate
        raise SystemExit(f"error: row {row}'s training ended with the status "
                         f"{results.get('status')!r}: {results.get('message', '')} (see "
                         f"{results_file}). Move {directory} away to train the row afresh.")
    start = time.perf_counter()
    print(f"vae-bench: row {row}: evaluating its final model, k = {k} (log: "
          f"{directory / 'eval-log'})", file=sys.stderr, flush=True)
    code = _run("evaluate", [f"ckpt_path={last}", f"eval.k={k}", f"output_dir={directory}",
                             f"hydra.run.dir={directory / 'eval-log'}", *(eval_overrides or [])],
                log)
    _check(code, "evaluating", row, log)
    evaluation = json.loads(rundir.path(directory, "eval").read_text())
    record = {
        "row": row, "bench": bench, "status": results.get("status"),
        "train_samples_seen": results.get("train_samples_seen"),
        # This vae-eval's wall time and the time of the earlier runs of a resumed evaluation.
        # Training's time over its resumed runs; its last run's alone where a checkpoint
        # predates that record (then marked: the page shows a lower bound).
        "train_seconds": (results.get("seconds") if results.get("seconds_total") is None
                          else results["seconds_total"]),
        **({"train_seconds_last_run_only": True} if results.get("seconds_total") is None
           else {}),
        "eval_seconds": round(
            time.perf_counter() - start + evaluation.get("seconds_of_earlier_runs", 0.0), 1),
        "test/elbo": results.get("test/elbo"), "iw": evaluation["iw"],
        "elbo": evaluation["elbo"], "k": evaluation["k"], "n": evaluation["n"],
        "active_units": evaluation["active_units"], "latent": evaluation["latent"],
        # A model of the labels' (M2) classifier q(y|x): its test error, beside the bound.
        **{key: evaluation[key] for key in ("classification_error",) if key in evaluation},
        "overrides": args, "eval_overrides": list(eval_overrides or []),
    }
    path = records / f"{row}.json"
    off = _off_protocol(record)
    if off and _on_protocol(path):
        # A quick run (-k 10, eval.limit) must not cost the row's protocol record (hours of
        # training and a k = 5000 evaluation): it is written beside, where the page does not
        # read it (records/*.json are the rows).
        path = records / OFF_PROTOCOL / f"{row}.json"
        print(f"vae-bench: row {row}'s record is off protocol ({off}); the protocol record "
              f"{records / f'{row}.json'} is kept, this one written to {path}.",
              file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(path, record)
    return path


OFF_PROTOCOL = "off-protocol"  # the folder, under the records', of records kept apart


def _on_protocol(path: Path) -> bool:
    """Whether ``path`` holds a row's record on the protocol (one the page reads and shows
    bold); False where there is none, or it cannot be read as a record."""
    try:
        return not _off_protocol(read_record(path)) if path.is_file() else False
    except DataError:
        return False


def _results(path: Path, row: str, directory: Path) -> dict[str, Any]:
    """The row's results.json, as far as the record reads it: one that does not parse, or is not
    an object, ends the row in one line (as a failed row's command does), not a traceback."""
    try:
        return json_files.read_object(path, "the row's training results",
                                      f"move {directory} away to train the row afresh",
                                      DataError, RESULTS)
    except DataError as err:
        raise SystemExit(f"error: row {row}: {err}") from None


# What the record reads of a row's results.json (vae-train writes it).
RESULTS = {
    "status": (optional(text), "a string (completed, diverged, interrupted, ...)"),
    "message": (optional(text), "a string"),
    "test/elbo": (optional(nats), f"{NATS}, or null"),
    "train_samples_seen": (optional(finite), "a finite number or null"),
    "seconds": (optional(finite), "a finite number or null"),
    "seconds_total": (optional(finite), "a finite number or null"),
}


def _nats(value: Any, spec: str = ".2f") -> str:
    return "—" if value is None else f"{value:{spec}}"


def _samples(value: Any) -> str:
    return "—" if value is None else f"{value:.3g}"


def _node(value: Any) -> bool:  # paper, pythae: a mapping, or nothing
    return value is None or isinstance(value, dict)


def _texts(value: Any) -> bool:  # a record's overrides
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# What the page reads of a record (``run`` writes them; strict JSON, a non-finite number null)
# and of a full-length run's point, each key with its test and, in words, what it accepts.
RECORD = {
    "row": (optional(text), "a string (the row's name, that of its file) or null"),
    "overrides": (optional(_texts), "a list of strings (key=value) or null"),
    "eval_overrides": (optional(_texts), "a list of strings (key=value) or null"),
    "bench": (json_files.mapping, "a mapping (the row's benchmark node)"),
    "bench.row": (optional(text), "a string or null"),
    "bench.config": (optional(text), "a string or null"),
    "bench.note": (optional(text), "a string or null"),
    "bench.paper": (_node, "a mapping or null"),
    "bench.pythae": (_node, "a mapping or null"),
    "bench.paper.value": (optional(nats), f"{NATS}, or null"),
    "bench.paper.source": (optional(text), "a string or null"),
    "bench.pythae.value": (optional(nats), f"{NATS}, or null"),
    "bench.pythae.setting": (optional(text), "a string or null"),
    "iw": (json_files.mapping, "a mapping of nats and nats_se"),
    "iw.nats": (nats, f"{NATS} (per test image)"),
    "iw.nats_se": (optional(nats), f"{NATS}, or null (one test point)"),
    "elbo": (json_files.mapping, "a mapping of nats"),
    "elbo.nats": (optional(nats), f"{NATS}, or null"),
    "active_units": (optional(whole), "an integer >= 0 or null (one test point)"),
    "latent": (whole, "an integer >= 0"),
    "train_samples_seen": (optional(finite), "a finite number or null"),
    "status": (text, "a string (completed, diverged)"),
    "k": (optional(lambda value: whole(value, 1)), "an integer >= 1 or null"),
    "n": (optional(lambda value: whole(value, 1)), "an integer >= 1 or null"),
    "classification_error": (optional(json_files.fraction),
                             "a number in [0, 1] (a classifier's test error) or null"),
    "train_seconds": (optional(finite), "a finite number or null"),
    "eval_seconds": (optional(finite), "a finite number or null"),
}
STRETCH = {
    "epoch": (whole, "an integer >= 0"),
    "samples_seen": (finite, "a finite number"),
    "test_elbo": (optional(nats), f"{NATS}, or null"),
    "iw": (nats, NATS),
    "iw_se": (optional(nats), f"{NATS}, or null"),
    "active_units": (optional(whole), "an integer >= 0 or null"),
}
REQUIRED = {"bench", "iw", "iw.nats", "elbo", "latent", "status",  # a record's
            "epoch", "samples_seen"}  # and a point's; "iw" is both: a point's is its number


def read_record(path: Path) -> dict[str, Any]:
    """A row's record, as the page reads it: refused (``DataError``, one message naming the
    file, the key, its value and what is accepted) when it is not what ``run`` writes."""
    fix = "write it again with vae-bench run, or move it away"
    found = json_files.read_object(path, "the row's record", fix, DataError, RECORD, REQUIRED)
    if found.get("row") not in (None, path.stem):  # a copy under another row's name: refused
        raise DataError(f"{path}: the record is of row {found['row']!r}, and its file names "
                        f"row {path.stem!r} (a record is <records>/<row>.json); {fix}.")
    return {**found, "row": path.stem}  # a null row is its file's (experiment=bench/<row>)


def read_stretches(path: Path) -> list[dict[str, Any]]:
    """A full-length run's points (``benchmarks/long/<run>/stretches.json``), checked as
    ``read_record`` checks a record."""
    fix = "mend it (benchmarks/long/run.sh appends its points), or move it away"
    points = json_files.read(path, "the full-length run's points", fix, DataError)
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise DataError(f"{path}: the full-length run's points are not a JSON list of objects "
                        f"(epoch, samples_seen, iw, ...); {fix}.")
    for index, point in enumerate(points):
        json_files.checked(path, point, STRETCH, f"point {index}", fix, DataError, REQUIRED)
    return points


def _best_first(found: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The rows by their log p(x) (a record's required, finite iw.nats), the highest first."""
    return sorted(found.items(), key=lambda item: -item[1]["iw"]["nats"])


# What a row's preset says of others' numbers (the papers', pythae's, and a note on the row):
# read from the shipped preset when the page is written, so that a value or setting corrected
# after the row was recorded is the page's; the record's copy where the preset is gone.
LITERATURE = ("paper", "pythae", "note")


def _described(row: str, record: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    """``record``'s ``bench`` node with ``LITERATURE`` taken from the row's preset (``known``:
    ``rows()``) where the preset is shipped."""
    preset = known.get(row)
    if preset is None:
        return record["bench"]
    return {**record["bench"], **{key: preset.get(key) for key in LITERATURE}}


def _summary(found: dict[str, dict[str, Any]], known: dict[str, Any]) -> list[str]:
    """The README's table: one line a row, the best log p(x) first."""
    lines = ["| row | log p(x), k = 5000 | ELBO | active units | paper (its own length) | "
             "pythae (its own setting: docs/benchmark.md) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row, record in _best_first(found):
        bench = _described(row, record, known)
        paper, pythae = bench.get("paper") or {}, bench.get("pythae") or {}
        cells = [f"{bench.get('row') or row} (`{bench.get('config') or ''}`)",
                 _iw(record).strip("*"), _nats(record["elbo"].get("nats")),
                 f"{_nats(record.get('active_units'), 'd')} of {record['latent']}",
                 _nats(paper.get("value")), _nats(pythae.get("value"))]
        # A record's words as cells, as on the page (a pipe in a row's name split the row).
        lines.append("| " + " | ".join(map(_table_cell, cells)) + " |")
    return lines + ["", "One training run (one seed) a row: the ± is the standard error over the "
                    "10,000 test images, not the spread between training runs. pythae's values "
                    "are each in its own setting (binarization, networks, number of importance "
                    "samples), which docs/benchmark.md gives beside each: quote it with the "
                    "number. A number of your own from `experiment=bench/<row>` at another "
                    "length, k or number of test points is not on this protocol: quote its "
                    "samples seen, k and points beside it."]


def _rewrite_readme(readme: Path, table: list[str]) -> None:
    """Put ``table`` between the README's two marker lines; a README without them is left as
    it is, and said so."""
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        print(f"vae-bench page: {readme} has no lines {BEGIN!r} ... {END!r}: its table was not "
              "written (add the two lines where the table goes, or give --readme '')",
              file=sys.stderr)
        return
    readme.write_text(text[:start] + "\n".join([BEGIN, *table, ""]) + text[end:])


def _classifier(record: dict[str, Any]) -> str:
    """What a semi-supervised row measured beside its bounds: its classifier's test error."""
    error = record.get("classification_error")
    return "" if error is None else (f"Its classifier q(y|x) misclassifies {100 * error:.2f} % "
                                     "of the test images.")


def _table_cell(text: str) -> str:
    """A record's words as one Markdown table cell: on one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def page(records: Path = RECORDS, out: Path = PAGE, long: Path = LONG,
         readme: Path | None = None) -> Path:
    """Write the page from the records (and the full-length runs' stretches), and its summary
    into ``readme`` where that file is (``_rewrite_readme``; the command's default README.md)."""
    found = {p.stem: read_record(p) for p in sorted(records.glob("*.json"))}
    stretches = {path: read_stretches(path) for path in sorted(long.glob("*/stretches.json"))}
    known = rows()
    if readme is not None and readme.is_file():
        _rewrite_readme(readme, _summary(found, known))
    protocol = " ".join(_protocol().split())
    lines = [
        "# The benchmark table",
        "",
        f"Generated by `vae-bench page` from the records in `{records.as_posix()}/` "
        "(`vae-bench run <row>` trains, evaluates and records a row). Every number is the "
        "importance-weighted estimate of log p(x) with k = 5000 samples, in nats per test image "
        "(higher is better), ± its standard error over the test images; the same protocol for "
        f"every row: {protocol}. Each row is one training run (one seed): the ± does not hold "
        "the spread between training runs, so rows less than about a nat apart are not shown "
        "to differ. The ELBO column is the mean log-weight of the same 5,000 draws per image "
        "(the run's results.json has a one-draw test/elbo beside it). Rows: the best log p(x) "
        "first. Wall time: one CPU core's, training and the k = 5000 "
        "evaluation, over every session a row was resumed in; \"≥\" where a part was recorded "
        "for its last session only (records from before the total was kept).",
        "",
        "| row | config | log p(x), k = 5000 | ELBO | active units | samples seen | wall time "
        "(train + eval) | status | paper | pythae |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, record in _best_first(found):
        bench = _described(row, record, known)
        paper, pythae = bench.get("paper") or {}, bench.get("pythae") or {}
        seconds = (record.get("train_seconds") or 0) + (record.get("eval_seconds") or 0)
        # A record from before resumed evaluations counted every run's time: its last run's only.
        at_least = "≥ " if (record.get("eval_seconds_last_run_only")
                            or record.get("train_seconds_last_run_only")) else ""
        source = f" ({paper['source']})" if paper.get("source") else ""
        # A null row or config (the record's schema allows it) is the file's name, or nothing:
        # not the word None.
        cells = [bench.get("row") or row, f"`{bench.get('config') or ''}`", _iw(record),
                 _nats(record["elbo"].get("nats")),
                 f"{_nats(record.get('active_units'), 'd')} of {record['latent']}",
                 _samples(record.get("train_samples_seen")),
                 f"{at_least}{seconds / 3600:.2f} h", record["status"],
                 f"{_nats(paper.get('value'))}{source}",
                 _nats(pythae.get("value")) + (f" ({pythae['setting']})"
                                               if pythae.get("setting") else "")]
        lines.append("| " + " | ".join(_table_cell(str(c)) for c in cells) + " |")
    missing = sorted(set(known) - set(found))
    lines += ["", "**How ours differs.** The papers train their own networks for their own length "
              "(Burda et al.: 3,280 epochs, about 2e8 samples; these rows: 1e7), mostly on "
              "dynamically binarized MNIST as here (a paper's value on static MNIST says so "
              "in its source); pythae's table uses statically binarized MNIST (Larochelle & "
              "Murray's fixed draw, easier to overfit, not comparable to the dynamic numbers to "
              "within a nat or two) except where a row's setting says dynamic (its MIWAE, "
              "PIWAE, CIWAE and S-VAE), with its own networks and latent sizes, and estimates "
              "log p(x) with 200 to 5000 importance samples: each value's setting is beside it. "
              "Its values are negated here (pythae reports -log p(x)). The papers' and "
              "pythae's values, and the notes below, are read from the rows' presets "
              "(`conf/experiment/bench/<row>.yaml`) when this page is written."]
    # What a row's number means where it is not what it seems (its preset's `benchmark.note`).
    notes = [(record["bench"].get("row") or row,
              " ".join(filter(None, [_described(row, record, known).get("note"),
                                     _classifier(record)])))
             for row, record in found.items()]
    if any(note for _, note in notes):
        lines += ["", "**Notes on rows.**", ""]
        lines += [f"- {name}: {' '.join(note.split())}" for name, note in notes if note]
    if missing:
        lines += ["", f"Rows not run yet: {', '.join(missing)} (`vae-bench run <row>`)."]
    if absent := not_rows():
        lines += ["", "**Options without a row** (`bench/_common.yaml`, `not_rows`):", ""]
        lines += [f"- {', '.join(f'`{option}`' for option in item['options'])}: "
                  f"{' '.join(item['why'].split())}." for item in absent]
    if stretches:
        lines += ["", "## Full length: the IWAE paper's model to 3,280 epochs", "",
                  "`experiment=iwae_mnist` (`benchmarks/long/run.sh`), resumed across sessions; "
                  "each stretch's end evaluated as above:", "",
                  "| run | epoch | samples seen | test ELBO | log p(x), k = 5000 | active units |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for path, points in stretches.items():
            for point in points:
                lines.append(f"| {path.parent.name} | {point['epoch']} | "
                             f"{point['samples_seen']:.3g} | {_nats(point.get('test_elbo'))} | "
                             f"{point['iw']:.2f} ± {_nats(point.get('iw_se'))} | "
                             f"{_nats(point.get('active_units'), 'd')} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vae-bench", description="Train, evaluate and tabulate the benchmark rows under "
        "one protocol (docs/benchmark.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="train (or resume), evaluate and record rows")
    run_parser.add_argument("rows", nargs="*", help="row names (vae-bench list)")
    run_parser.add_argument("--missing", action="store_true",
                            help="only the rows without a record (the named ones, in their "
                            "order, or else every row), going on past a row that fails")
    # The folders are relative to where the command runs: the checkout's root.
    run_parser.add_argument("--runs", type=Path, default=RUNS,
                            help="where the runs go (default: %(default)s)")
    run_parser.add_argument("--records", type=Path, default=RECORDS,
                            help="where records go (default: %(default)s)")
    run_parser.add_argument("-k", type=_at_least_one, default=K,
                            help="importance samples (at least 1)")
    run_parser.add_argument("--override", action="append", default=[],
                            help="a vae-train override for every row (repeatable)")
    run_parser.add_argument("--eval-override", action="append", default=[],
                            help="a vae-eval override (repeatable)")
    page_parser = sub.add_parser("page", help="write docs/benchmark.md from the records")
    page_parser.add_argument("--records", type=Path, default=RECORDS,
                             help="the rows' records (default: %(default)s)")
    page_parser.add_argument("--out", type=Path, default=PAGE,
                             help="the page written (default: %(default)s)")
    page_parser.add_argument("--long", type=Path, default=LONG,
                             help="the full-length runs whose stretches the page adds "
                             "(default: %(default)s)")
    page_parser.add_argument("--readme", default=str(README),
                             help="the README whose table to rewrite between its marker lines "
                             "('' for none; skipped where the file is not; default: "
                             "%(default)s)")
    sub.add_parser("list", help="the rows")
    args = parser.parse_args(argv)
    try:
        return _command(args, parser)
    except UserError as err:  # bad input, before any row trains or any file is written
        print(f"{err.prefix}: {err}", file=sys.stderr)
        return err.exit_code


def _at_least_one(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"the importance samples are a whole number, at least "
                                         f"1, not {text} (the protocol's is {K})")
    return value


def _writable(**directories: Path) -> None:
    """Refuse output directories (by option: ``runs=...``) that cannot be made or written,
    before any row trains: each is checked before any is made."""
    for key, directory in directories.items():
        writable_directory(directory, f"--{key}")
    for key, directory in directories.items():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UnwritableError(f"--{key} {directory}: cannot be created ({err.strerror}); "
                                  f"choose another --{key}.") from None


# What vae-bench's evaluation of a row sets itself, and why (refused in --eval-override).
OWN_EVAL_KEYS = {
    "output_dir": "the row's folder, where its record is read from",
    "ckpt_path": "the row's last checkpoint",
    "eval.bounds": "true: a record is of the bounds its row's evaluation estimates, not of an "
                   "earlier eval.json's",
}


def _check_overrides(todo: list[str], overrides: list[str], eval_overrides: list[str],
                     k: int) -> None:
    """Compose the rows' training configs with ``--override`` (a misspelt key or option is
    refused as vae-train would refuse it) and the evaluation's with ``--eval-override``, through
    vae-eval's checks: a bad value is one line before any row trains, not after its training."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vae_lightning.config_checks import check
    from vae_lightning.hydra_errors import hydra_message

    for item in eval_overrides:
        # The evaluation's folder and checkpoint are the row's: given again, vae-eval evaluated
        # or wrote elsewhere, and the record was made from the row's eval.json all the same (an
        # earlier evaluation's, or none: a traceback). Its bounds are estimated by the row's
        # own evaluation: with eval.bounds=false, vae-eval took them from an earlier eval.json
        # in the row's folder (or refused, after the row's hours of training).
        if (key := item.split("=", 1)[0].lstrip("+~")) in OWN_EVAL_KEYS:
            raise ConfigError(f"--eval-override {item}: vae-bench sets {key} itself "
                              f"({OWN_EVAL_KEYS[key]}); leave {key} out.")
    option = "--override"
    try:
        with initialize_config_module("vae_lightning.conf", version_base="1.3"):
            for row in todo if overrides else []:
                compose("train", overrides=[f"experiment=bench/{row}", *overrides])
            option = "--eval-override"
            cfg = compose("eval", overrides=["ckpt_path=checkpoints/last.ckpt",  # not read
                                             f"eval.k={k}", *eval_overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{option}: {hydra_message(err)}") from None
    try:
        check(cfg)
    except ConfigError as err:
        raise ConfigError(f"--eval-override: {err}") from None


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "list":
        for name, bench in rows().items():
            print(f"{name}: {bench.get('row', '')} ({bench.get('config', '')})")
    elif args.command == "run":
        if not args.rows and not args.missing:
            parser.error("run: name the rows, or give --missing for every row without a record")
        known = rows()
        _refuse_unknown(args.rows, known)  # before any row trains: a typo at a list's end too
        todo = args.rows or list(known)
        if args.missing:
            todo = [row for row in todo if not (args.records / f"{row}.json").is_file()]
        _check_overrides(todo, args.override, args.eval_override, args.k)
        _writable(runs=args.runs, records=args.records)
        failed = []
        for row in todo:
            if args.missing and (args.records / f"{row}.json").is_file():
                continue  # recorded meanwhile, by another process
            try:
                print(run(row, args.runs, args.records, args.k, args.override,
                          args.eval_override), flush=True)
            except Stopped as stop:  # a signal: the queue ends here
                print(stop.message, file=sys.stderr, flush=True)
                return int(stop.code)
            except Busy as busy:
                if not args.missing:
                    raise SystemExit(f"error: {busy}") from None
                print(f"{busy}: skipped", flush=True)
            except SystemExit as error:
                if not args.missing:
                    raise
                print(error, file=sys.stderr, flush=True)
                failed.append(row)
        if failed:
            print(f"error: rows without a record after this run: {', '.join(failed)}",
                  file=sys.stderr)
            return 1
    else:
        if not args.records.is_dir():
            found = "not a directory" if args.records.exists() else "no such directory"
            raise ConfigError(f"--records {args.records}: {found}; it is the folder of the rows' "
                              f"records (vae-bench run writes them; the default is {RECORDS}).")
        if args.out.is_dir():
            raise ConfigError(f"--out {args.out} is a directory; the page is a file (the "
                              f"default is {PAGE}).")
        _writable(out=args.out.parent)
        try:
            written = page(args.records, args.out, args.long,
                           Path(args.readme) if args.readme else None)
        except OSError as err:  # a directory that takes no new file (/proc), a full disk
            raise UnwritableError(f"Cannot write {err.filename or args.out}: {err.strerror}; "
                                  "choose another --out (or --readme).") from None
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
