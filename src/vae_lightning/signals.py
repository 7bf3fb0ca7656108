"""A signal outside training (SIGTERM, or Ctrl-C between the jobs of a sweep) ends the command
with one line saying what was kept and how to go on; during training Lightning's handler stops
the run at the epoch's end (``train.py``) and the handler here does nothing.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from vae_lightning.errors import Interrupted


class Signal(BaseException):
    """A signal outside training, raised in the main thread as Python raises KeyboardInterrupt
    for Ctrl-C: not an ``Exception``, so that no ``except Exception`` on its way (in a library,
    in Hydra's job runner) takes it for an error of its own and goes on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def on_signal(signum: int, frame: Any) -> None:
    """SIGTERM outside training ends the command (``Signal``). During training Lightning's
    handler runs this one after its own, which stops the run at the epoch's end (``train.py``):
    then nothing is done here."""
    if signal.getsignal(signum) is not on_signal:
        return
    raise Signal(signum)


def stopped(signum: int, run_dir: str | None, overrides: list[str] | None = None,
            progress: Path | None = None) -> Interrupted:
    """A signal outside training as the error to report, with what to do: resume from the run's
    last checkpoint, or run the command again. ``overrides``: the run's, where it is another
    process's (a job of a sweep this process launched), not this one's; without ``run_dir``, in
    a sweep with jobs that keep a checkpoint, the line points to their results.json, which says
    how to resume each (``sweeps.interrupted``); ``progress``, a file that keeps the command's
    work so far (vae-eval's batches), named where it exists."""
    from vae_lightning import rundir, sweeps
    from vae_lightning.console import command, override

    words = ["vae-train", *(o for o in (sweeps.command_overrides() if overrides is None
                                        else overrides)
                            if not o.startswith(("ckpt_path=", "hydra.run.dir=")))]
    # Again in the run's own directory, which it claimed (a new one otherwise).
    again = command(*words, *([override("hydra.run.dir", run_dir)] if run_dir else []))
    last = rundir.last_checkpoint(run_dir) if run_dir else None
    resumable = sweeps.resumable_jobs() if run_dir is None else []
    if last is not None and last.is_file():
        where = " outside training" if overrides is None else ""
        what = (f"{where}; the state after the latest epoch is in {last}. Resume "
                f"with: {command(*words, override('ckpt_path', last))}")
    elif run_dir:
        what = f" before the run trained; nothing was trained. Run it again: {again}"
    elif progress is not None and progress.is_file():
        annealed = progress.with_name(rundir.AIS_PROGRESS)  # vae-eval's AIS, after the IW batches
        also = f" (and AIS's in {annealed})" if annealed.is_file() else ""
        what = (f"; the batches evaluated so far are kept in {progress}{also}: the same command "
                "goes on from them")
    elif resumable:
        what = ("; each job of the sweep that had trained keeps its last checkpoint, and its "
                "results.json says how to resume it")
    else:
        what = "; nothing more was written. Run the command again"
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
    return Interrupted(f"Stopped by {name}{what}.", signum)


def catch(signum: int) -> Any:
    """Install ``on_signal`` for ``signum``; the handler it replaces (None: not the main
    thread, where signals cannot be handled)."""
    try:
        return signal.signal(signum, on_signal)
    except ValueError:
        return None
