"""The layout of a run directory, in one place:

    <run>/results.json            the run's results (train.py)
    <run>/curve.json              Fig. 2's curve (callbacks.BoundCurve)
    <run>/eval.json               eval.py's estimates (the newest; an earlier one of other
                                  settings kept as eval-<split>-k<k>-n<n>.json: kept_evaluation)
    <run>/checkpoints/last.ckpt   the state after the latest epoch (what a resume continues)
    <run>/checkpoints/best-epochNNN.ckpt, nonfinite-stepN.ckpt, last-stepN.ckpt (a last.ckpt
                                  kept by a resume from another checkpoint: train.py)
    <run>/figures/                the paper's figures (callbacks.Figures)
    <run>/samples/                vae-sample's samples.png and samples.npy
    <run>/.hydra/                 the run's config and command-line overrides (Hydra)

The configs reach it through the ``${run_path:...}`` resolver. Imports no torch.

A run directory belongs to one run: ``claim`` locks it for the life of the process and notes
whether it already held a run; Hydra writes its record (``.hydra/``) only into a directory that
did not (``${run_record:}``), so a refused or resumed run never rewrites another's record, and
``guard`` refuses a second writer, a fresh run into an existing run's directory, and a resume
into a directory that holds another run than its checkpoint's.

``prepare`` runs before Hydra creates the directory (``cli.Preflight``): a directory that cannot
be created or written is refused before anything exists, and the folders its creation adds are
noted, so that ``discard`` can remove them when the run is refused: a refused run leaves nothing.

``ckpt_path=last`` means one thing: the ``checkpoints/last.ckpt`` of the run directory, which is
``hydra.run.dir`` when given, else the newest run under the runs' root (``outputs/``: the run
whose ``last.ckpt`` was written last, ``newest_run``): ``resume_checkpoint`` is the file, and
``resumed_run`` says which run for the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from vae_lightning.errors import CheckpointError, ConfigError, UnwritableError
from vae_lightning.files import atomic_write, kind, unwritable

RESULTS = "results.json"
CURVE = "curve.json"
EVAL = "eval.json"
EVAL_PROGRESS = "eval.progress.pt"  # a vae-eval's batches done so far (log_likelihood.Progress)
AIS_PROGRESS = "eval.ais-progress.pt"  # its AIS's batches done so far (ais.Progress)
EVAL_LOCK = "eval.lock"  # held (flock) by the vae-eval writing the directory's progress files
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
FIGURES = "figures"
SAMPLES = "samples"
HYDRA = ".hydra"
CONFIG_TREE = "config_tree.log"  # the resolved config, with extras.print_config
LAST_KEYWORD = "last"  # ckpt_path=last
LAYOUT = {"results": RESULTS, "curve": CURVE, "eval": EVAL, "eval_progress": EVAL_PROGRESS,
          "ais_progress": AIS_PROGRESS, "checkpoints": CHECKPOINTS, "figures": FIGURES,
          "samples": SAMPLES, "config_tree": CONFIG_TREE}


def kept_evaluation(eval_json: Path, split: str | None = None, k: int | None = None,
                    n: int | None = None, number: int = 1) -> Path:
    """Where an ``eval.json`` of ``split``, ``k`` and ``n`` points that a new evaluation replaces
    is kept: ``eval-<split>-k<k>-n<n>.json`` beside it; ``eval-earlier.json`` when they are not
    given; ``-<number>`` before ``.json`` for the number-th file of that name (another
    checkpoint's evaluation of the same settings)."""
    named = None not in (split, k, n)
    stem = f"eval-{split}-k{k}-n{n}" if named else "eval-earlier"
    return eval_json.with_name(f"{stem}-{number}.json" if number > 1 else f"{stem}.json")


def _absolute(directory: str | Path) -> Path:
    """``directory`` as an absolute path, normalised as Hydra's ``hydra.runtime.output_dir``."""
    return Path(os.path.abspath(directory))


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


# What ``ckpt_path=last`` last looked up: [(the runs' root, the run picked or None, the fresh
# directory it stood for)].
_looked_up: list[tuple[Path, Path | None, Path]] = []


def last_run(fresh: str | Path) -> Path:
    """The run directory of ``ckpt_path=last`` when ``hydra.run.dir`` is left to its default
    ``fresh`` (``<root>/<date>/<time>``): the newest run under ``<root>``, else ``fresh``."""
    root = Path(fresh).parent.parent
    newest = newest_run(root)
    _looked_up[:] = [(root, _absolute(newest) if newest is not None else None, _absolute(fresh))]
    return newest if newest is not None else Path(fresh)


def resume_checkpoint(ckpt_path: str | None, directory: str | Path) -> str | None:
    """The checkpoint a run in ``directory`` resumes from: None for a fresh run (no
    ``ckpt_path``), the path given, or for ``last`` the directory's ``checkpoints/last.ckpt``; a
    missing one is a ``CheckpointError`` saying where it was looked for."""
    if ckpt_path != LAST_KEYWORD:
        return ckpt_path
    path = last_checkpoint(directory)
    if not path.is_file():
        picked = _looked_up[0] if _looked_up else None
        where = (f"no run under {picked[0]}/ has a <date>/<time>/checkpoints/last.ckpt to resume"
                 if picked is not None and picked[2] == _absolute(directory) else
                 f"there is no {path} to resume from (hydra.run.dir={directory})")
        raise CheckpointError(
            f"ckpt_path=last: {where}. Name the run with hydra.run.dir=<run dir> or "
            "ckpt_path=<run dir>/checkpoints/last.ckpt, or start a fresh run without ckpt_path.")
    return str(path)


def resumed_run(directory: str | Path) -> str:
    """What ``ckpt_path=last`` resumes, for the log: the run in ``directory``, and why it was
    picked when it was the newest run under the runs' root."""
    picked = _looked_up[0] if _looked_up else None
    why = (f" (the newest run under {picked[0]}/: its last.ckpt was written last)"
           if picked is not None and picked[1] == _absolute(directory) else "")
    return f"ckpt_path=last: resuming the run in {directory}{why} from its {CHECKPOINTS}/{LAST}"


# The statuses of a job's results.json (``sweeps.record_failure``) that, without checkpoints,
# leave nothing to resume: a job stopped by a signal, or failed (bad input, missing data, a bug)
# before its first checkpoint.
NOTHING_TO_RESUME = ("interrupted", "error")


def is_run(directory: str | Path) -> bool:
    """Whether ``directory`` already holds a run that trained: its checkpoints or results. A
    record alone, of a run refused before training, does not count, nor the results of a job
    stopped or failed before its first checkpoint (``NOTHING_TO_RESUME``): there is nothing to
    resume, and the command that started it, run again, starts afresh there (a sweep's job that
    failed on bad input or missing data runs again when the sweep does, once the cause is
    fixed; it was refused as holding a run, and ``ckpt_path=last`` found nothing to resume)."""
    directory = Path(directory)
    if (directory / CHECKPOINTS).exists():
        return True
    if not (directory / RESULTS).exists():
        return False
    # Checkpoints elsewhere in it are a run's all the same: with callbacks=none Lightning's own
    # checkpointing writes <logger dir>/checkpoints/epoch=...ckpt, and a run stopped there was
    # said to have nothing to resume, and run again over its metrics.csv.
    return status(directory) not in NOTHING_TO_RESUME or bool(checkpoint_files(directory))


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The checkpoint files (``*.ckpt``) anywhere under ``directory``, links not followed,
    oldest first."""
    found = []
    for root, _, files in os.walk(directory):
        found += [Path(root) / name for name in files if name.endswith(".ckpt")]
    return sorted(found, key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat(follow_symlinks=False).st_mtime
    except OSError:  # removed meanwhile (a checkpoint callback replacing its best)
        return 0.0


def status(directory: str | Path) -> str | None:
    """The status its ``results.json`` records for the run in ``directory`` (``sweeps``:
    completed, interrupted, ...); None without one, "unreadable" for one that does not parse
    (taken as a run's, never overwritten)."""
    results = Path(directory) / RESULTS
    if not results.exists():
        return None
    try:
        return str(json.loads(results.read_text()).get("status"))
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinite float made None: JSON has no NaN, and a reader
    other than Python's (jq, JavaScript, a spreadsheet) refuses the file that holds one."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    return value


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, as strict JSON (a value that is not finite, such
    as a diverged run's bound or the standard error of one point, is null): a reader sees the
    old file or the new one."""
    with atomic_write(path, "w") as file:
        file.write(json.dumps(_strict(payload), indent=2, allow_nan=False) + "\n")


class Claim(NamedTuple):
    """This process's claim on a run directory."""

    held_elsewhere: bool  # another process holds the directory's lock
    had_run: bool  # the directory held a run (its record, checkpoints or results) before


_claims: dict[str, Claim] = {}
_locks: dict[str, int] = {}  # the locked directories' descriptors, open until ``release``


def _key(directory: str | Path) -> str:
    """A directory's key in ``_claims`` and ``_locks``: its resolved path, so that two spellings
    of one directory share one claim."""
    return str(Path(directory).resolve())


def run_directory(directory: Any) -> str:
    """``output_dir`` of a training run, which must name its directory: null was a TypeError
    traceback, and an empty string wrote the run's files into the current directory."""
    if not isinstance(directory, str) or not directory.strip():
        shown = "null" if directory is None else repr(directory)
        raise ConfigError(f"output_dir={shown} is not allowed: expected the run's directory, a "
                          "path (its default: Hydra's run directory; set it with "
                          "hydra.run.dir=<dir>).")
    return directory


def locked(path: str | Path, flags: int) -> int | None:
    """A descriptor of ``path`` (opened with ``flags``) holding its exclusive flock, or None
    where another process holds that lock. The lock ends when the descriptor is closed, or its
    process ends, however it ends: no stale lock file decides anything. A lock file its holder
    removed on release (``evaluating``) while this process waited to open it is opened again:
    the lock of a file no longer at ``path`` would let two processes hold "the" lock at once."""
    while True:
        fd = os.open(path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def evaluating(directory: str | Path) -> Iterator[None]:
    """Hold ``directory``'s evaluation lock (``EVAL_LOCK``, a file locked with flock and
    removed when released) while a vae-eval writes its progress files and eval.json there; a
    second vae-eval into it meanwhile is refused (``ConfigError``): both saved to one
    eval.progress.pt in turn, and the one that ended first removed it, losing the batches of a
    stopped long evaluation."""
    lock = Path(directory) / EVAL_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_NOFOLLOW: a link named eval.lock chooses no file to create, lock or remove
        fd = locked(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW)
    except OSError as err:  # a folder, a link or a device there: not a lock vae-eval made
        found = "a symbolic link" if lock.is_symlink() else kind(lock)
        if found is None:  # a regular file that cannot be opened for writing
            raise UnwritableError(f"output_dir={directory}: its {EVAL_LOCK} cannot be opened "
                                  f"({err.strerror}); give another output_dir.") from None
        raise ConfigError(f"output_dir={directory}: its {EVAL_LOCK} (the lock file a vae-eval "
                          f"holds while it writes there) is {found}, not a lock file; move it "
                          "away, or give another output_dir.") from None
    if fd is None:
        raise ConfigError(f"output_dir={directory}: another vae-eval is evaluating into it now "
                          f"({lock} is held): its progress files and eval.json would be "
                          "overwritten by this one's. Wait for it to end, or give this one "
                          "another output_dir.")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def claim(directory: str | Path) -> Claim:
    """Lock ``directory`` (created if needed) for this process, once; later calls return the
    first call's answer. A DDP rank started by Lightning (LOCAL_RANK > 0) shares rank 0's."""
    key = _key(directory)
    if key not in _claims:
        if int(os.environ.get("LOCAL_RANK", "0")) > 0:
            _claims[key] = Claim(False, False)
            return _claims[key]
        had_run = is_run(key)
        Path(key).mkdir(parents=True, exist_ok=True)
        fd = locked(key, os.O_RDONLY)
        if fd is not None:
            _locks[key] = fd
        _claims[key] = Claim(fd is None, had_run)
    return _claims[key]


def claimed(directory: str | Path) -> bool:
    """Whether this process holds a claim on ``directory`` (``claim``, not yet ``release``d)."""
    return _key(directory) in _claims


def release(directory: str | Path | None) -> None:
    """End this process's claim on ``directory`` (its job has ended): unlock and close it, and
    forget the claim, so that a process that runs many jobs (a sweep's jobs in one process,
    Optuna's trials) holds one descriptor at a time, not one per job it ran, and a later claim of
    the directory sees the run this job left there."""
    if directory is None:
        return
    key = _key(directory)
    _claims.pop(key, None)
    fd = _locks.pop(key, None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops its flock


def record_dir(directory: str | Path) -> str | None:
    """Where Hydra writes the run's record (``hydra.output_subdir``): ``.hydra`` in a directory
    this process claimed fresh, else nowhere (an existing run's record stays as it is)."""
    found = claim(directory)
    return None if found.held_elsewhere or found.had_run else HYDRA


def _named(directory: str | Path) -> tuple[str, str]:
    """How a refusal names the run's directory and the setting that chooses another: a sweep's
    job is in hydra.sweep.dir/<job>, where hydra.run.dir plays no part (told to choose another
    hydra.run.dir, the user of a sweep changed nothing)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = HydraConfig.get().sweep.dir
        return f"the sweep's job directory {directory} (hydra.sweep.dir={sweep})", \
            "hydra.sweep.dir"
    return f"hydra.run.dir={directory}", "hydra.run.dir"


def guard(directory: str | Path, resuming: str | bool | None) -> None:
    """Refuse, before anything is written, a run into ``directory`` while another process writes
    there, a fresh run into a directory that holds a run, and a resume into a directory that holds
    another run than its checkpoint's. ``resuming``: the checkpoint the run resumes from
    (``ckpt_path``: a path, or ``last`` for the directory's own), None or False for a fresh run
    (True: a resume from a checkpoint not named here)."""
    found = claim(directory)
    if found.held_elsewhere:
        where, key = _named(directory)
        raise ConfigError(
            f"{where} is in use by another run (its process holds the directory's lock): wait "
            f"for it to end, or choose another {key}.")
    if found.had_run:
        refuse_into(directory, resuming)


def refuse_into(directory: str | Path, resuming: str | bool | None) -> None:
    """Refuse a run into ``directory``, which holds a run: a fresh one (``resuming`` None or
    False), or a resume from a checkpoint of another run (``guard``)."""
    if not resuming:
        where, key = _named(directory)
        raise ConfigError(
            f"{where} already holds a run (its checkpoints or results.json); nothing was "
            "written. Resume it with ckpt_path=last and the overrides it was started with, or "
            f"choose another {key}.")
    if isinstance(resuming, str) and resuming != LAST_KEYWORD and (
            of_checkpoint(resuming) != Path(directory).resolve()) and not (
            Path(resuming).resolve().is_relative_to(Path(directory).resolve())):
        # (one inside it is its run's: Lightning's own, <logger dir>/checkpoints, callbacks=none)
        raise ConfigError(
            f"hydra.run.dir={directory} holds another run than ckpt_path={resuming} (whose run "
            f"directory is {of_checkpoint(resuming)}); nothing was written. A resume goes on in "
            "its checkpoint's run directory (leave hydra.run.dir out) or in a fresh one "
            "(hydra.run.dir=<a new directory>).")


# The folder that creating each run directory adds (the first that did not exist), by run dir.
_created: dict[Path, Path] = {}


def prepare(directory: str | Path, key: str = "hydra.run.dir") -> None:
    """Before ``directory`` is created (by Hydra): refuse, with nothing written, one that cannot
    be a writable directory: a file (``ConfigError``), a path through a file (``ConfigError``),
    on a read-only filesystem or without write permission (``UnwritableError``); and note the
    first of its folders that does not exist yet, which ``discard`` may remove."""
    target = _absolute(directory)
    existing = target
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == target else f"is under {existing}, a file"
        if existing.is_symlink() and not existing.exists():
            what = f"{'is' if existing == target else 'is under'} a broken symbolic link"
        raise ConfigError(f"{key}={directory} {what}, not a directory; nothing was written. "
                          f"Choose another {key}.")
    reason = unwritable(existing)
    if reason:
        raise UnwritableError(f"{key}={directory} cannot be written: {existing} is {reason}; "
                              f"nothing was written. Choose another {key}.")
    if existing != target:
        _created[target] = existing / target.relative_to(existing).parts[0]


def discard_all() -> None:
    """``discard`` every directory ``prepare`` noted (a command that ends refused)."""
    for directory in list(_created):
        discard(directory)


def forget() -> None:
    """Forget the directories ``prepare`` noted: a command starts, or ended as it should."""
    _created.clear()


def discard(directory: str | Path) -> bool:
    """Remove the folders that creating ``directory`` added (``prepare``), if it holds nothing
    but what a run writes before its checks pass (Hydra's record ``.hydra/`` and ``*.log``): a
    refused run leaves nothing. A folder that existed before is never removed. Returns whether
    the directory was removed."""
    target = _absolute(directory)
    top = _created.pop(target, None)
    if top is None or not target.is_dir():
        return False
    if any(item.name != HYDRA and item.suffix != ".log" for item in target.iterdir()):
        return False
    shutil.rmtree(target)
    folder = target.parent
    while folder != top.parent and top in (folder, *folder.parents):
        try:
            folder.rmdir()  # only when empty: another run may have been created there since
        except OSError:
            break
        folder = folder.parent
    return True


def record_resume(directory: str | Path, overrides: list[str]) -> Path:
    """Keep a resumed attempt's command-line overrides beside the run's own record."""
    folder = Path(directory) / HYDRA / "resumes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.yaml"
    path.write_text("".join(f"- {item}\n" for item in overrides))
    return path
