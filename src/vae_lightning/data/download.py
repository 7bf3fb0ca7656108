"""Find data files on disk, or fetch them from mirrors with md5 checks and atomic writes; open a
user's data file as untrusted input (regular files only, its size checked against the memory
available before it is read, its content never quoted in a message)."""

from __future__ import annotations

import hashlib
import os
import resource
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from vae_lightning import files
from vae_lightning.errors import DataError


class DataNotFoundError(DataError, FileNotFoundError):
    """Required data files are missing and could not be downloaded."""


# What to do about a path that is not a regular file, by what it is (files.kind).
_MEND = {"a dangling symbolic link": "its target does not exist: point the link at an existing "
                                     "file, or remove it",
         "a directory": "name a file"}


def open_data(path: str | os.PathLike, what: str, key: str | None = None) -> BinaryIO:
    """Open the data file ``path`` for reading (binary) if it is a regular file: a FIFO, device
    or socket would block the run or feed it endless bytes, so it is refused up front, as is a
    dangling link, with one line naming ``key`` (the config key, if the user named the file),
    the path, what it is and ``what`` was expected. A missing file is a ``DataNotFoundError``."""
    label = f"{key}={str(path)!r}" if key else str(path)
    try:
        found = files.kind(path)
        if found is None:
            return files.open_regular(path, DataError, what)
    except OSError as err:
        raise DataError(f"{label} cannot be read ({describe(err)}): fix its "
                        "permissions.") from None
    if found == "missing":
        raise DataNotFoundError(f"{label} does not exist: expected {what}.")
    raise not_regular(label, found, what)


def not_regular(label: str, found: str, what: str) -> DataError:
    """The error for the path ``label``, which is ``found`` (``files.kind``: a FIFO, a dangling
    link, ...) where ``what``, a regular file, was expected; it says what to do."""
    mend = _MEND.get(found, "replace it with a regular file, or remove it")
    return DataError(f"{label} is {found}, not a regular file: expected {what}; {mend}.")


def describe(err: BaseException) -> str:
    """What went wrong reading a file, in words that never quote the file: the operating
    system's message for an error it reported (errno set), else the exception's type alone (a
    parser's message may hold bytes of the file)."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        return err.strerror
    return type(err).__name__


def nameable(name: str) -> bool:
    """Whether a name found in a file (an array's, a variable's) may be shown in a message: an
    identifier (what numpy.savez and MATLAB write) of at most 64 characters, so that a message
    cannot quote arbitrary bytes of a file."""
    return name.isidentifier() and len(name) <= 64


def names(found: Iterable[str]) -> str:
    """The names ``found`` in a file (its arrays, its variables) for a message: the ``nameable``
    ones listed, any others only counted."""
    found = list(found)
    shown = [n for n in found if nameable(n)]
    others = len(found) - len(shown)
    listed = ", ".join(shown) or "none"
    return listed + (f" (and {others} other{'s' * (others > 1)})" if others else "")


def available_memory() -> int | None:
    """Bytes this process can still allocate, if known (Linux): the least of the system's
    MemAvailable, the room under this process's cgroup (v2) memory.max, and the room under its
    address-space limit (``ulimit -v``)."""
    room = [r for r in (_meminfo_available(), _cgroup_room(), _address_space_room())
            if r is not None]
    return max(0, min(room)) if room else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    try:  # /proc/self/cgroup is "0::/<the cgroup>" under cgroup v2
        group = Path("/sys/fs/cgroup", Path("/proc/self/cgroup").read_text().split("::")[-1]
                     .strip().lstrip("/"))
        limit = (group / "memory.max").read_text().strip()
        if limit != "max":
            return int(limit) - int((group / "memory.current").read_text())
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_room() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:  # statm's first field: this process's address space, in pages
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return soft - pages * os.sysconf("SC_PAGE_SIZE")


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse, before allocating, data of ``nbytes`` that would not fit in the memory available
    (``available_memory``): one line, ``what`` it is, both sizes and the ``fix``, rather than an
    allocation failure's traceback or the system's out-of-memory killer."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise DataError(f"{what}: {_gib(nbytes)} GiB, more than the {_gib(available)} GiB of "
                        f"memory available; {fix}.")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g}"


def md5sum(path: str | os.PathLike) -> str:
    """Return the hex md5 digest of a file."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Copy ``url`` to ``dest`` (the caller removes ``dest`` on failure)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        for block in iter(lambda: resp.read(1 << 20), b""):
            out.write(block)


def download(name: str, md5: str, directory: Path, mirrors: Sequence[str]) -> Path:
    """Download ``name`` from the first mirror that serves it with the right md5.

    Each try writes to a temporary file in ``directory`` (``files.atomic_write``, owner-only
    permissions) that is renamed into place only when the md5 matches (a mismatch raises inside
    the write, which removes it), so no partial file is ever left behind.
    Returns the final path; raises ``DataNotFoundError`` listing every failure.
    """
    created = not directory.exists()  # removed again if nothing comes of it
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataNotFoundError(f"Cannot create {directory} to download {name} into "
                                f"({err.strerror}): set data.root or VAE_DATA_DIR to a writable "
                                "directory, or put the file there by hand.") from None
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        try:
            with files.atomic_write(directory / name) as out:
                fetch(url, Path(out.name))  # fetch writes the file by its name
                got = md5sum(out.name)
                if got != md5:
                    raise OSError(f"md5 {got} does not match the expected {md5}")
            return directory / name
        except Exception as err:  # any failure: try the next mirror
            errors.append(f"{url}: {err}")
    if created and not any(directory.iterdir()):
        directory.rmdir()  # no empty folder left where the user looks for the data
    raise DataNotFoundError(f"Could not download {name}: " + "; ".join(errors))


def find(name: str, dirs: Iterable[Path]) -> Path | None:
    """Return the first ``dir/name`` or ``dir/name-without-.gz`` that exists, else None; anything
    else under such a name (a directory, a FIFO, a dangling link: ``files.kind``) is an error,
    not a missing file (which would be downloaded)."""
    for d in dirs:
        for candidate in (d / name, d / name.removesuffix(".gz")):
            found = files.kind(candidate)
            if found is None:
                return candidate
            if found != "missing":
                raise DataError(f"{candidate} is {found} where the data file {name} should "
                                "be: remove or rename it.")
    return None


def ensure_files(
    files: Mapping[str, str],
    dirs: Sequence[Path],
    mirrors: Sequence[str],
    download_missing: bool,
) -> dict[str, Path]:
    """Locate each of ``files`` (name -> md5 of the .gz) in ``dirs``, downloading into ``dirs[0]``.

    Files already on disk are trusted (the IDX reader checks their structure); downloaded ones
    are md5-verified. Raises ``DataNotFoundError`` naming the directory and missing files.
    """
    found, missing, errors = {}, [], []
    for name, md5 in files.items():
        path = find(name, dirs)
        if path is None and download_missing:
            try:
                path = download(name, md5, dirs[0], mirrors)
            except DataNotFoundError as err:
                errors.append(str(err))
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        # One failure is shown: offline, every file from every mirror fails the same way.
        why = (f"downloading failed ({len(errors)} of {len(errors)} tries; the first: "
               f"{errors[0]})" if len(errors) > 1 else f"downloading failed ({errors[0]})"
               if errors else "not downloaded: data.download=false")
        searched = (f" (also searched: {', '.join(map(str, dirs[1:]))})" if dirs[1:] else "")
        raise DataNotFoundError(
            f"Missing {', '.join(missing)} in {Path(dirs[0]).absolute()}{searched}; {why}. "
            f"Place the files there by hand (gzipped or not), e.g. from {mirrors[0]}, with "
            "these md5 sums: " + ", ".join(f"{n} {files[n]}" for n in missing) + "; or, where "
            "they are elsewhere, point data.root (or the environment variable VAE_DATA_DIR) at "
            f"the folder that holds {Path(dirs[0]).name}/ with them."
        )
    return found
