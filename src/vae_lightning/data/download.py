"""Find data files on disk, or fetch them from mirrors with md5 checks and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .errors import DataError


class DataNotFoundError(DataError, FileNotFoundError):
    """Required data files are missing and could not be downloaded."""


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

    Each try writes to a temporary file in ``directory`` and moves it into place with
    ``os.replace`` only after the md5 matches, so no partial file is ever left behind.
    Returns the final path; raises ``DataNotFoundError`` listing every failure.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataNotFoundError(f"Cannot create {directory} to download {name} into "
                                f"({err.strerror}): set data.root or VAE_DATA_DIR to a writable "
                                "directory, or put the file there by hand.") from None
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
        os.close(fd)
        try:
            fetch(url, Path(tmp))
            got = md5sum(tmp)
            if got != md5:
                raise OSError(f"md5 {got} does not match the expected {md5}")
            os.replace(tmp, directory / name)
            return directory / name
        except Exception as err:  # any failure: try the next mirror
            errors.append(f"{url}: {err}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataNotFoundError(f"Could not download {name}: " + "; ".join(errors))


def find(name: str, dirs: Iterable[Path]) -> Path | None:
    """Return the first ``dir/name`` or ``dir/name-without-.gz`` that exists, else None; a
    directory under such a name is an error, not a missing file (which would be downloaded)."""
    for d in dirs:
        for candidate in (d / name, d / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
            if candidate.exists():
                raise DataError(f"{candidate} is a directory where the data file {name} should "
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
        why = "downloading failed (" + " | ".join(errors) + ")" if errors else "download=False"
        raise DataNotFoundError(
            f"Missing {', '.join(missing)} in {dirs[0]} (also searched: "
            f"{', '.join(map(str, dirs[1:])) or 'nothing else'}); {why}. Place the files there "
            f"by hand (gzipped or not), e.g. from {mirrors[0]}, with these md5 sums: "
            + ", ".join(f"{n} {files[n]}" for n in missing)
            + "."
        )
    return found
