"""Mirror downloads: md5 checks, fallback, atomic writes, and the offline error. No network."""

import hashlib
import urllib.error
from pathlib import Path

import pytest

from vae_lightning.data import download as dl
from vae_lightning.data.download import DataNotFoundError, download, ensure_files, find

PAYLOAD = b"not really an IDX file, but bytes to fetch"
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def mirror(tmp_path) -> str:
    """A file:// mirror that serves a.gz."""
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "a.gz").write_bytes(PAYLOAD)
    return (tmp_path / "mirror").as_uri() + "/"


def test_download_verifies_and_writes(tmp_path, mirror):
    out = download("a.gz", MD5, tmp_path / "data", [mirror])
    assert out == tmp_path / "data" / "a.gz" and out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a.gz"]


def test_download_falls_back_to_next_mirror(tmp_path, mirror):
    dead = (tmp_path / "nothing").as_uri() + "/"
    assert download("a.gz", MD5, tmp_path / "data", [dead, mirror]).read_bytes() == PAYLOAD


def test_md5_mismatch_leaves_nothing(tmp_path, mirror):
    with pytest.raises(DataNotFoundError, match="does not match"):
        download("a.gz", "0" * 32, tmp_path / "data", [mirror])
    assert not (tmp_path / "data").exists()  # nothing: no partial file, no empty folder


def test_interrupted_fetch_leaves_nothing(tmp_path, monkeypatch):
    def broken(url: str, dest: Path, timeout: float = 60.0) -> None:
        dest.write_bytes(PAYLOAD[:5])
        raise ConnectionResetError("connection reset mid-transfer")

    monkeypatch.setattr(dl, "fetch", broken)
    with pytest.raises(DataNotFoundError, match="mid-transfer"):
        download("a.gz", MD5, tmp_path / "data", ["https://a.example/", "https://b.example/"])
    assert not (tmp_path / "data").exists()  # not even the folder it made to download into


def test_offline_error_names_dir_and_missing_files(tmp_path, monkeypatch):
    def offline(url: str, dest: Path, timeout: float = 60.0) -> None:
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(dl, "fetch", offline)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "have-idx1-ubyte").write_bytes(b"x")  # an un-gzipped copy counts
    files = {"have-idx1-ubyte.gz": MD5, "miss-one.gz": MD5, "miss-two.gz": MD5}
    with pytest.raises(DataNotFoundError) as err:
        ensure_files(files, [tmp_path / "d"], ["https://a.example/"], download_missing=True)
    msg = str(err.value)
    assert str(tmp_path / "d") in msg and "by hand" in msg and "network unreachable" in msg
    assert "miss-one.gz" in msg and "miss-two.gz" in msg and "have-idx1" not in msg
    assert "2 of 2 tries; the first:" in msg  # one failure shown, not every mirror's
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["have-idx1-ubyte"]


def test_no_download_error_names_missing_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="b.gz.*data.download=false"):
        ensure_files({"b.gz": MD5}, [tmp_path], ["https://a.example/"], download_missing=False)


def test_find_searches_dirs_in_order(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "f.gz").write_bytes(b"")
    assert find("f.gz", [tmp_path / "one", tmp_path / "two"]) == tmp_path / "two" / "f.gz"
    (tmp_path / "one" / "f").write_bytes(b"")
    assert find("f.gz", [tmp_path / "one", tmp_path / "two"]) == tmp_path / "one" / "f"
    assert find("g.gz", [tmp_path / "one"]) is None


def test_the_missing_files_error_gives_the_absolute_folder_and_how_to_point_elsewhere(
        tmp_path, monkeypatch):
    """The default root is ./data, relative to where the command runs: the error names the
    folder searched as an absolute path, and how to point the run at files kept elsewhere
    (a newcomer read 'Missing ... in data/mnist' and did not know of data.root)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        ensure_files({"b.gz": MD5}, [Path("data") / "mnist"], ["https://a.example/"],
                     download_missing=False)
    msg = str(err.value)
    assert f"Missing b.gz in {tmp_path / 'data' / 'mnist'};" in msg
    assert msg.endswith("point data.root (or the environment variable VAE_DATA_DIR) at the "
                        "folder that holds mnist/ with them.")
