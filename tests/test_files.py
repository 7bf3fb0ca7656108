"""files.atomic_write (and npy.atomic_npy on it): a reader sees the old file or the whole new
one; a failed or interrupted write leaves the old file and no temporary file."""

import os
import stat

import numpy as np
import pytest

from vae_lightning import files
from vae_lightning.data.npy import atomic_npy
from vae_lightning.files import atomic_write


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old content")
    with pytest.raises(type(error)), atomic_write(path) as file:
        file.write(b"new con")
        file.flush()  # the partial bytes are on disk, under the temporary name
        assert _names(tmp_path) == sorted(["data.bin", os.path.basename(file.name)])
        raise error
    assert path.read_bytes() == b"old content"
    assert _names(tmp_path) == ["data.bin"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_write(tmp_path / "new.bin") as file:
        file.write(b"x")
        raise ValueError("bad")
    assert _names(tmp_path) == []


def test_a_successful_write_replaces_the_file_whole_and_synced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    payload = os.urandom(3 << 20)
    with atomic_write(path) as file:
        file.write(payload)
        assert path.read_bytes() == b"old"  # nothing shows under the name before the rename
    assert path.read_bytes() == payload and _names(tmp_path) == ["data.bin"]
    assert synced == [False]  # the file's data, before the rename
    with atomic_write(path, sync_directory=True) as file:
        file.write(b"again")
    assert path.read_bytes() == b"again" and synced == [False, False, True]


def test_text_mode_and_newline_are_open_s(tmp_path):
    with atomic_write(tmp_path / "a.csv", "w", newline="") as file:
        file.write("a,b\r\n1,2\n")
    with atomic_write(tmp_path / "b.txt", "w") as file:
        file.write("line\n")
    assert (tmp_path / "a.csv").read_bytes() == b"a,b\r\n1,2\n"
    assert (tmp_path / "b.txt").read_text() == "line\n"


def test_permissions_are_the_umask_s_as_open_gives(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "shared.bin") as file:
            file.write(b"x")
        with open(tmp_path / "plain.bin", "wb") as file:  # what open gives under this umask
            file.write(b"x")
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode["shared.bin"] == mode["plain.bin"] == 0o640


def test_atomic_npy_streams_blocks_into_one_array_and_refuses_a_wrong_total(tmp_path):
    rows = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    with atomic_npy(tmp_path / "a.npy", rows.shape) as append:
        append(rows[:4])
        append(rows[4:])
    read = np.load(tmp_path / "a.npy")
    assert read.dtype == np.float32 and np.array_equal(read, rows.astype(np.float32))
    with pytest.raises(ValueError, match="shape"), atomic_npy(tmp_path / "a.npy",
                                                             (7, 2, 2)) as append:
        append(rows)
    assert np.array_equal(np.load(tmp_path / "a.npy"), read)  # the old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]  # no temporary left


def test_the_temporary_file_is_hidden_beside_the_target_and_never_another_s(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "same")
    other = tmp_path / ".t.json.same.tmp"
    other.write_bytes(b"another writer's")
    with pytest.raises(FileExistsError), atomic_write(tmp_path / "t.json", "w"):
        pass
    assert other.read_bytes() == b"another writer's" and _names(tmp_path) == [other.name]
