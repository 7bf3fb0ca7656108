"""The errors a user can act on, and the exit code of each (README.md, "Exit codes").

Every command turns these into one ``error:`` line on stderr and the exit code below; anything
else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message says what is wrong and how to mend it."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An invalid configuration or command-line option (bad input: exit code 2)."""


class DataError(UserError, ValueError):
    """Data that is missing, corrupt or does not fit the options (bad input: exit code 2)."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, corrupt, not ours, or not resumable (exit code 2)."""


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN or infinite loss (exit code 3)."""

    exit_code = 3


EXIT_CODES = {
    0: "done",
    1: "an unexpected error: a bug (the traceback is printed; please report it)",
    2: "bad input: configuration, data, checkpoint or run directory; nothing was trained",
    3: "the loss became non-finite; the last good state is saved",
    130: "interrupted (SIGINT, Ctrl-C); resume with ckpt_path=last",
    143: "terminated (SIGTERM, e.g. by a scheduler); resume with ckpt_path=last",
}
