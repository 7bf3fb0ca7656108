"""The errors a user can act on, and the exit code of each (docs/reliability.md, "Exit codes").

Every command turns these into one ``error:`` line on stderr and the exit code below; anything
else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message says what is wrong and how to mend it."""

    exit_code = 2
    prefix = "error"
    status = "error"  # the run's status in results.json (vae_lightning.sweeps)


class ConfigError(UserError, ValueError):
    """An invalid configuration or command-line option (bad input: exit code 2)."""


class DataError(UserError, ValueError):
    """Data that is missing, corrupt or does not fit the options (bad input: exit code 2)."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, corrupt, not ours, or not resumable (exit code 2)."""


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN or infinite loss, or a command's output (an estimate, samples,
    posterior locations) would hold NaN or infinite values (exit code 3)."""

    exit_code = 3
    status = "nonfinite"


class Diverged(UserError, RuntimeError):
    """Training ran its length, but the bound ran away (exit code 4; the rule: sweeps.py)."""

    exit_code = 4
    status = "diverged"


class UnwritableError(UserError, OSError):
    """The run's files cannot be written: a full disk, a read-only directory, permissions."""

    exit_code = 74  # EX_IOERR (sysexits.h)


EXIT_CODES = {
    0: "done (also: a resumed run that was already complete, left as it was)",
    1: "an unexpected error: a bug (the traceback is printed; please report it)",
    2: "bad input: configuration, data, checkpoint or run directory; nothing was trained",
    3: ("the loss became non-finite (the last good state is saved), or vae-eval's, vae-sample's "
        "or vae-encode's output would (nothing is written)"),
    4: "the bound diverged: it ended below the untrained model's (results.json has the numbers)",
    5: "a sweep (-m) finished with failed jobs; its last line counts them by status",
    74: "the run's files cannot be written (disk full, read-only, permissions)",
    130: "interrupted by SIGINT (Ctrl-C); the state is saved, resume with ckpt_path",
    143: "terminated by SIGTERM (e.g. a scheduler); the state is saved, resume with ckpt_path",
}


class Interrupted(UserError):
    """A signal stopped training (exit code 128 + the signal's number: 130 SIGINT, 143 SIGTERM)."""

    status = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class NothingToDo(UserError):
    """The command has nothing to do (e.g. resuming a run that is complete): exit code 0."""

    exit_code = 0
    prefix = "note"
