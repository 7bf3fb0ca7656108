"""What the commands print besides their results: known third-party noise hidden
(``extras.ignore_warnings``), one console line per log record under Hydra, and the resolved
config (``extras.print_config``)."""

from __future__ import annotations

import logging
import shlex
import warnings
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Known third-party output that needs no action (extras.ignore_warnings): warnings by the start
# of their message, and Lightning's adverts among its log lines.
NOISE = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch's pytree, inside Lightning
    # A run without a validation split (data.val_size=0) has an empty validation loader, and
    # its checkpoint callback no val/elbo to monitor (the last checkpoint is the run's then).
    r"Total length of `\w+` across ranks is zero",
    r"`ModelCheckpoint\(monitor='val/",
    # The data modules hold the data in memory: worker processes would not be faster.
    r"The '\w+' does not have many workers",
    # The training sampler skips the batches a mid-epoch checkpoint already trained
    # (data.sampling.ShardedBatchSampler's done): the resume is exact.
    r"You're resuming from a checkpoint that ended before the epoch ended",
)
ADVERTS = ("💡 Tip:",)


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTS)


def quiet(cfg: DictConfig) -> None:
    """Hide ``NOISE`` and ``ADVERTS`` (``extras.ignore_warnings``, on for the commands that have
    no ``extras``)."""
    if not OmegaConf.select(cfg, "extras.ignore_warnings", default=True):
        return
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())


def print_config(cfg: DictConfig) -> None:
    """``extras.print_config``: the resolved config as YAML on the console, and in the run
    directory's ``config_tree.log`` when the directory is this run's own (not a resumed run's)."""
    from vae_lightning import rundir

    if not OmegaConf.select(cfg, "extras.print_config", default=False):
        return
    text = OmegaConf.to_yaml(plain_values(cfg))
    print(text, end="", flush=True)
    if rundir.record_dir(cfg.output_dir) is not None:
        rundir.path(cfg.output_dir, "config_tree").write_text(text)


def plain_values(node: Any) -> Any:
    """``node`` as plain values, each resolved where it can be; ``???`` where it cannot yet
    (``model.data_shape`` and what refers to it: the run fills them in)."""
    if isinstance(node, DictConfig):
        resolved = {}
        for key in node:
            try:
                resolved[key] = plain_values(node[key])
            except OmegaConfBaseException:
                resolved[key] = "???"
        return resolved
    if isinstance(node, ListConfig):
        return [plain_values(item) for item in node]
    return node


# A log record's ``extra`` that keeps it in the job's log file and off the console, where the
# command prints the same words itself (a sweep's failed job: its ``error:`` line).
FILE_ONLY = {"file_only": True}


class _NotOnConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def one_log_line_per_record() -> None:
    """``import lightning`` gives the ``lightning`` logger a console handler of its own, which
    doubles every record that also reaches Hydra's handlers on the root logger; under Hydra the
    root handlers (console and the job's log file) are the only ones. The console's leaves out
    the records logged with ``FILE_ONLY``."""
    import lightning  # noqa: F401  (its import adds the handler)

    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and not any(
                isinstance(f, _NotOnConsole) for f in handler.filters):
            handler.addFilter(_NotOnConsole())


def override(key: str, value: object) -> str:
    """``key=value`` as Hydra reads it back as the string ``value``: plain where Hydra's
    grammar takes it so (a path of letters, digits, ``/``, ``.``, ``-``, spaces), else in Hydra's
    quotes (a path with a comma would be a sweep, with a parenthesis or a letter beyond ASCII
    a parse error)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = str(value)
    parser = OverridesParser.create()
    for quoted in (text, '"' + text.replace('"', '\\"') + '"',
                   "'" + text.replace("'", "\\'") + "'"):
        try:
            if parser.parse_override(f"{key}={quoted}").value() == text:
                return f"{key}={quoted}"
        except Exception:  # noqa: BLE001 - Hydra's grammar errors: try the next form
            continue
    return f"{key}={text}"


def command(*words: str) -> str:
    """A command line to paste into a POSIX shell: each word as one argument (``shlex.quote``:
    a path with a space split in two, and the command failed)."""
    return " ".join(shlex.quote(word) for word in words)

