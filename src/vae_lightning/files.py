"""Opening the files a user names (data files, checkpoints) as untrusted input: only regular files
are opened, so that a FIFO, a device or a socket under a file's name cannot block a run forever or
feed it endless bytes; and writing files atomically (``atomic_write``). Imports no torch."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from vae_lightning.errors import ConfigError, UnwritableError, UserError


def kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is not a regular file (``"a directory"``, ``"a FIFO"``, ...,
    ``"a dangling symbolic link"``, ``"missing"``); None for a regular file (links followed)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a dangling symbolic link" if os.path.islink(path) else "missing"
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, error: type[UserError], what: str) -> BinaryIO:
    """Open ``path`` for reading in binary mode if it is a regular file, else raise ``error``
    naming ``what`` it should be. The file is opened without blocking (a FIFO swapped in after the
    check cannot hang the open) and checked again through the open descriptor."""
    found = kind(path)
    if found is None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            found = "not a regular file"
        else:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
    raise error(f"{Path(path)} is {found}; expected {what} (a regular file).")


def unwritable(folder: Path) -> str | None:
    """Why nothing can be created in the existing directory ``folder`` ("not writable (a
    read-only filesystem)", ...), or None. Tried by creating and removing an empty folder in it
    rather than asked of ``os.access``, which answers yes to root everywhere: on a
    pseudo-filesystem such as /proc, where even root creates nothing, the run would fail at its
    first write."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=folder))
    except OSError as err:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "not writable (a read-only filesystem)"
        if isinstance(err, PermissionError):
            return "not writable (permissions)"
        return f"not writable (creating a folder in it failed: {err.strerror})"
    return None


def writable_directory(directory: Path, key: str) -> None:
    """Refuse, before any work, an output directory that is a file, lies under a file, or
    cannot be written (``unwritable``)."""
    for parent in [directory, *directory.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key}={directory}: {parent} is a file, not a directory; "
                                  f"choose a directory for {key}.")
            reason = unwritable(parent)
            if reason:
                raise UnwritableError(f"Cannot write into {directory}: {parent} is {reason}. "
                                      f"Choose another {key} or fix its permissions.")
            return


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, newline: str | None = None,
                 sync_directory: bool = False) -> Iterator[IO]:
    """Write ``path`` atomically: yields a new temporary file ``.<name>.<random>.tmp`` in the
    same folder (``mode`` "wb" or "w"; ``newline`` as ``open``'s), which on normal exit is
    flushed to disk (fsync) and renamed over ``path`` (``os.replace``, atomic within one
    filesystem), so a reader sees the old file or the whole new one, never a torn one. On any
    exception (a full disk, Ctrl-C) the temporary file is removed and the exception re-raised:
    ``path`` is untouched. The file gets the umask's permissions, as ``open`` would give it (not
    ``tempfile.mkstemp``'s owner-only 0600: a checkpoint or a data file under a shared data root
    must stay readable to whom the umask allows); ``sync_directory`` also syncs the folder, so
    that the rename itself survives a power cut."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    file = open(temporary, mode, newline=newline,  # O_EXCL: never another writer's file
                opener=lambda name, flags: os.open(name, flags | os.O_EXCL, 0o666))
    try:
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if sync_directory:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
