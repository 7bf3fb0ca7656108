"""Hostile data files: each case builds the fault for real (a FIFO, a dangling link, a forged
header, a decompression bomb under a real address-space limit, a file of secrets) and asserts
that the reader refuses it up front with one line (a ``DataError``: exit code 2) that names the
file and never quotes its content, without hanging or allocating what the file claims."""

from __future__ import annotations

import gzip
import io
import os
import resource
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from vae_lightning.data import (
    ArrayDataModule,
    CIFAR10DataModule,
    DataError,
    FolderDataModule,
    MNISTDataModule,
)
from vae_lightning.data import cifar as cifar_module
from vae_lightning.data.frey import read_frey_mat
from vae_lightning.data.idx import read_idx, write_idx

SECRET = b"API_TOKEN=hunter2-do-not-print;"
MIB = 1 << 20


def one_line(err: pytest.ExceptionInfo, *names: object) -> str:
    """The error's message, checked to be one line naming each of ``names``."""
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    for name in names:
        assert str(name) in message, f"{name} not in {message}"
    return message


def quotes(message: str, content: bytes) -> bool:
    """Whether ``message`` holds any 4 consecutive bytes of ``content``, as text, repr or hex."""
    for i in range(max(1, len(content) - 3)):
        piece = content[i:i + 4]
        if piece.decode("latin-1") in message or repr(piece)[2:-1] in message \
                or piece.hex() in message:
            return True
    return False


def npy_header(descr: object, shape: tuple[int, ...]) -> bytes:
    """A .npy header, written by numpy's own writer, declaring ``descr`` and ``shape``."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return out.getvalue()


def png(path: Path, size=(8, 8), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


@contextmanager
def fifo(path: Path, timeout: float = 10.0) -> Iterator[Path]:
    """A real FIFO at ``path``. A reader that blocks on it (the fault) is released after
    ``timeout`` seconds by opening and closing its writing end, and the test then fails: a
    regression fails rather than hangs."""
    os.mkfifo(path)
    done, fired = threading.Event(), threading.Event()

    def watchdog() -> None:
        if done.wait(timeout):
            return
        fired.set()
        while not done.wait(0.1):  # until the blocked reader has let go
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet
                pass

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        done.set()
        thread.join()
    assert not fired.is_set(), f"reading {path} blocked: the FIFO was opened"


@contextmanager
def memory_room(room: int) -> Iterator[None]:
    """This process's address space limited, for real (``ulimit -v``), to what it uses now
    plus ``room`` bytes; the limit is lifted on the way out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    if hard != resource.RLIM_INFINITY and hard < used + room:
        pytest.skip(f"the hard address-space limit ({hard} bytes) is below what is needed")
    resource.setrlimit(resource.RLIMIT_AS, (used + room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where`` (skipped where mounting is not permitted),
    unmounted on the way out."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def read_only(where: Path) -> None:
    """Remount the tmpfs at ``where`` read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


class Zeros(io.RawIOBase):
    """``n`` zero bytes, streamed (a bomb's payload, never held in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left, MIB)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def cifar_archive(root: Path, members: dict[str, object]) -> Path:
    """``root/cifar10/cifar-10-binary.tar.gz`` holding ``members`` (bytes, or ``Zeros``)."""
    archive = root / "cifar10" / CIFAR10DataModule.archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = data.left if isinstance(data, Zeros) else len(data)
            tar.addfile(info, data if isinstance(data, Zeros) else io.BytesIO(data))
    return archive


def mnist_root(root: Path) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))
    return folder


# ------------------------------------------------------ 1. a file's content is never quoted
def _secret_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(SECRET * 40)
    return path


def _array_of_secrets(tmp_path):
    path = _secret_file(tmp_path, "images.npy")
    return lambda: ArrayDataModule(path=str(path)), path, SECRET


def _array_of_environ(tmp_path):
    environ = Path("/proc/self/environ")
    content = environ.read_bytes()[:64] if environ.is_file() else b""
    if len(content) < 6:
        pytest.skip("/proc/self/environ is absent or empty here")
    return lambda: ArrayDataModule(path=str(environ)), environ, content


def _npy_header_of_secrets(tmp_path):
    path = tmp_path / "header.npy"
    text = b"{'descr': '" + SECRET + b"', 'fortran_order': False, 'shape': (4, 4, 4)}\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text)
    return lambda: ArrayDataModule(path=str(path)), path, SECRET


def _npz_member_named_by_secrets(tmp_path):
    path = tmp_path / "named.npz"
    np.savez(path, **{"x": np.zeros((4, 4, 4), np.uint8), SECRET.decode(): np.zeros(3)})
    return lambda: ArrayDataModule(path=str(path), key="images"), path, SECRET


def _npz_only_member_named_by_secrets(tmp_path):
    """The only array (chosen with key=null), named by secrets, of a refused dtype: the message
    names the array without its name."""
    path = tmp_path / "only.npz"
    np.savez(path, **{SECRET.decode(): np.zeros((4, 4, 4), np.int64)})
    return lambda: ArrayDataModule(path=str(path)), path, SECRET


def _structured_dtype_of_secrets(tmp_path):
    path = tmp_path / "fields.npy"
    np.save(path, np.zeros((4, 4, 4), [(SECRET.decode(), np.uint8), ("b", np.float32)]))
    return lambda: ArrayDataModule(path=str(path)), path, SECRET


def _float_pixel_value(tmp_path):
    path = tmp_path / "floats.npy"
    np.save(path, np.full((10, 4, 4), 123.456, np.float32))
    dm = ArrayDataModule(path=str(path), val_size=1, test_size=1)
    return dm.setup, path, b"123.456"


def _idx_of_secrets(tmp_path):
    path = _secret_file(tmp_path, "train-images-idx3-ubyte")
    return lambda: read_idx(path), path, SECRET


def _gzipped_idx_of_secrets(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + SECRET * 40)  # a gzip signature, then no gzip stream
    return lambda: read_idx(path), path, SECRET


def _mat_of_secrets(tmp_path):
    path = _secret_file(tmp_path, "frey_rawface.mat")
    return lambda: read_frey_mat(path), path, SECRET


def _mat_variable_named_by_secrets(tmp_path):
    path = tmp_path / "frey_rawface.mat"
    scipy.io.savemat(path, {"faces": np.zeros((2, 2), np.uint8)})
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"faces", b"a=b;c"))  # a name that is no identifier
    return lambda: read_frey_mat(path), path, b"a=b;c"


def _image_of_secrets(tmp_path):
    folder = tmp_path / "images"
    for i in range(4):
        png(folder / f"{i}.png", seed=i)
    path = _secret_file(folder, "secret.png")
    return lambda: FolderDataModule(path=str(folder), root=str(tmp_path / "root")), path, SECRET


def _cifar_label(tmp_path):
    record = bytes([200]) + b"\0" * 3072  # label 200 of CIFAR-10's 0..9
    cifar_archive(tmp_path, {n: record for n in cifar_module.TRAIN + cifar_module.TEST})
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, val_size=1)
    return lambda: dm.setup("test"), "test_batch.bin", b"200"


QUOTING = {"array of secrets": _array_of_secrets, "array: /proc/self/environ": _array_of_environ,
           "npy header": _npy_header_of_secrets, "npz member name": _npz_member_named_by_secrets,
           "npz only member's name": _npz_only_member_named_by_secrets,
           "structured dtype field": _structured_dtype_of_secrets,
           "float pixel value": _float_pixel_value, "IDX": _idx_of_secrets,
           "gzipped IDX": _gzipped_idx_of_secrets, "mat": _mat_of_secrets,
           "mat variable name": _mat_variable_named_by_secrets, "image": _image_of_secrets,
           "CIFAR-10 label": _cifar_label}


@pytest.mark.parametrize("case", QUOTING)
def test_a_data_files_content_is_never_quoted(case, tmp_path):
    read, path, content = QUOTING[case](tmp_path)
    with pytest.raises(DataError) as err:
        read()
    message = one_line(err, path)
    assert not quotes(message, content), message


# ---------------------------------------------------------------- 2. only regular files open
def _folder_fifo(tmp_path, size):
    folder = tmp_path / "images"
    for i in range(4):
        png(folder / f"{i}.png", seed=i)
    path = folder / "stuck.png"

    def read():
        FolderDataModule(path=str(folder), size=size, root=str(tmp_path / "root"),
                         val_size=1, test_size=1).setup()
    return read, path


def _array_fifo(tmp_path):
    path = tmp_path / "images.npz"
    return lambda: ArrayDataModule(path=str(path)), path


def _frey_fifo(tmp_path):
    path = tmp_path / "frey_rawface.mat"
    return lambda: read_frey_mat(path), path


def _idx_fifo(tmp_path):
    folder = mnist_root(tmp_path)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.unlink()
    return lambda: MNISTDataModule(root=str(tmp_path), download=False).setup("test"), path


def _cifar_batch_fifo(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in cifar_module.TRAIN:
        (folder / name).write_bytes(b"\0" * cifar_module.RECORD)
    path = folder / "test_batch.bin"
    return lambda: CIFAR10DataModule(root=str(tmp_path), download=False).setup("test"), path


def _cifar_archive_fifo(tmp_path):
    (tmp_path / "cifar10").mkdir()
    path = tmp_path / "cifar10" / CIFAR10DataModule.archive
    return lambda: CIFAR10DataModule(root=str(tmp_path), download=True).setup("test"), path


FIFOS = {"folder image, own size": lambda t: _folder_fifo(t, None),
         "folder image, data.size": lambda t: _folder_fifo(t, 8), "array data.path": _array_fifo,
         "frey .mat": _frey_fifo, "MNIST IDX file": _idx_fifo,
         "CIFAR-10 batch file": _cifar_batch_fifo, "CIFAR-10 archive": _cifar_archive_fifo}


@pytest.mark.parametrize("case", FIFOS)
def test_a_fifo_is_refused_up_front(case, tmp_path):
    read, path = FIFOS[case](tmp_path)
    with fifo(path), pytest.raises(DataError) as err:
        read()
    one_line(err, path, "FIFO")


def test_a_device_as_data_path_is_refused(tmp_path):
    with pytest.raises(DataError) as err:
        ArrayDataModule(path="/dev/zero")
    one_line(err, "path='/dev/zero'", "is a character device, not a regular file")


# ------------------------------------------------------- 3. sizes checked before reading
def test_npz_member_claiming_1e12_images_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_header("|u1", (10**12, 28, 28)) + b"\0" * 1000)
    with pytest.raises(DataError) as err:
        ArrayDataModule(path=str(path))
    one_line(err, path, "(data.key='x')", "declares uint8 [1000000000000, 28, 28]",
             "but holds at most 1,000")


def test_npy_claiming_more_than_the_file_holds_is_refused_up_front(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_header("<f4", (10**9, 32, 32)) + b"\0" * 4096)
    with pytest.raises(DataError) as err:
        ArrayDataModule(path=str(path))  # before setup: nothing is mapped or allocated
    one_line(err, path, "declares float32 [1000000000, 32, 32]", "but holds at most 4,096")


def test_deflated_member_claiming_more_than_deflate_can_expand_is_refused(tmp_path):
    """A member whose zip entry claims an uncompressed size its few compressed bytes cannot
    expand to (deflate: at most 1032 to 1)."""
    path = tmp_path / "forged.npz"
    claimed = 0xFFFF0000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_header("|u1", (claimed // 64, 8, 8))[:128])
    raw = bytearray(path.read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    raw[local + 22:local + 26] = claimed.to_bytes(4, "little")  # uncompressed size, local
    raw[central + 24:central + 28] = claimed.to_bytes(4, "little")  # and central header
    path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(path).getinfo("x.npy").file_size == claimed
    with pytest.raises(DataError) as err:
        ArrayDataModule(path=str(path))
    one_line(err, path, f"declares uint8 [{claimed // 64}, 8, 8]", "but holds at most")


def test_npz_zip_bomb_is_refused_within_the_memory_available(tmp_path):
    """A real deflate bomb (128 MiB of zeros in well under 1 MiB), read under a real limit of
    32 MiB more address space: refused from its header, not decompressed into memory."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as member:
        member.write(npy_header("|u1", (2048, 256, 256)))
        for _ in range(128):
            member.write(bytes(MIB))
    assert path.stat().st_size < MIB
    with memory_room(32 * MIB), pytest.raises(DataError) as err:
        ArrayDataModule(path=str(path)).setup()
    one_line(err, path, "declares uint8 [2048, 256, 256]: 0.125 GiB", "of memory available")


# ------------------------------------------------------------------ 4. dangling symbolic links
def test_a_dangling_link_in_an_image_folder_is_named_as_such(tmp_path):
    folder = tmp_path / "images"
    for i in range(4):
        png(folder / f"{i}.png", seed=i)
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    with pytest.raises(DataError) as err:
        FolderDataModule(path=str(folder), root=str(tmp_path / "root"))
    message = one_line(err, folder / "gone.png", "is a dangling symbolic link",
                       "point the link at an existing file, or remove it")
    assert "permission" not in message


def test_a_dangling_link_as_data_path_is_named_as_such(tmp_path):
    path = tmp_path / "images.npz"
    path.symlink_to(tmp_path / "deleted.npz")
    with pytest.raises(DataError) as err:
        ArrayDataModule(path=str(path))
    one_line(err, f"path={str(path)!r}", "is a dangling symbolic link",
             "point the link at an existing file, or remove it")


# ------------------------------------------------- 5. the folder cache: under the data root
def test_a_read_only_image_folder_is_read_and_nothing_is_written_into_it(tmp_path):
    """The image folder on a read-only mount: by default the images keep their own size and
    the cache goes under the data root, so a read-only folder is no fault at all."""
    with tmpfs(tmp_path / "images", "1m") as folder:
        for i in range(10):
            png(folder / f"{i}.png", size=(6, 10), seed=i)
        read_only(folder)
        dm = FolderDataModule(path=str(folder), root=str(tmp_path / "root"), val_size=1,
                              test_size=1)
        assert dm.shape == (3, 6, 10)
        dm.setup()
        assert sorted(p.name for p in folder.iterdir()) == [f"{i}.png" for i in range(10)]
    (cache,) = dm.cache_dir.iterdir()
    assert dm.cache_dir.parent == tmp_path / "root" / "folder_cache"
    assert np.load(cache, allow_pickle=False).shape == (10, 3, 6, 10)


def test_a_full_cache_disk_leaves_no_partial_cache_and_the_run_goes_on(tmp_path, caplog):
    """data.cache on a real 64 KiB tmpfs, the decoded images (120 KiB) larger: one warning
    naming the folder and the reason, no partial file left, the images served all the same."""
    folder = tmp_path / "images"
    for i in range(40):
        png(folder / f"{i}.png", size=(32, 32), seed=i)
    with tmpfs(tmp_path / "cache", "64k") as cache:
        dm = FolderDataModule(path=str(folder), cache=str(cache), root=str(tmp_path / "root"),
                              val_size=1, test_size=1)
        dm.setup()
        assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert sum(len(dm.splits[s][0]) for s in dm.splits) == 40
    assert "Could not write the image cache" in caplog.text
    assert "No space left on device" in caplog.text
    assert not (tmp_path / "root").exists()


def test_a_fifo_in_place_of_the_cache_is_passed_over(tmp_path, caplog):
    """The cache file replaced by a FIFO: not opened (it would block), decoded again, and the
    FIFO replaced by a real cache."""
    folder = tmp_path / "images"
    for i in range(6):
        png(folder / f"{i}.png", seed=i)
    first = FolderDataModule(path=str(folder), root=str(tmp_path / "root"), val_size=1,
                             test_size=1)
    first.setup()
    (cache,) = first.cache_dir.iterdir()
    cache.unlink()
    with fifo(cache):
        again = FolderDataModule(path=str(folder), root=str(tmp_path / "root"), val_size=1,
                                 test_size=1)
        again.setup()
    assert cache.is_file() and "Ignoring the unreadable image cache" in caplog.text
    assert np.array_equal(again.splits["train"][0], first.splits["train"][0])


# ------------------------------------------------------------------------- 6. other faults
def test_idx_gzip_bomb_is_refused_within_the_memory_available(tmp_path):
    folder = mnist_root(tmp_path)
    path = folder / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(bytes([0, 0, 8, 3]) + np.array([171196, 28, 28], ">u4").tobytes())
        for _ in range(128):
            fh.write(bytes(MIB))
    assert path.stat().st_size < MIB
    with memory_room(32 * MIB), pytest.raises(DataError) as err:
        MNISTDataModule(root=str(tmp_path), download=False).setup("test")
    one_line(err, path, "declares uint8 [171196, 28, 28]", "of memory available")


def test_idx_header_claiming_huge_dimensions_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x0E, 4]) + np.full(4, 2**32 - 1, ">u4").tobytes() + b"\0" * 64)
    with pytest.raises(DataError) as err:
        read_idx(path)
    one_line(err, path, "holds 64 data bytes", "truncated or corrupt")


def test_cifar_archive_bomb_is_refused_within_the_memory_available(tmp_path):
    records = 128 * MIB // cifar_module.RECORD
    archive = cifar_archive(tmp_path, {"test_batch.bin": Zeros(records * cifar_module.RECORD)})
    assert archive.stat().st_size < MIB
    dm = CIFAR10DataModule(root=str(tmp_path), download=False)
    with memory_room(32 * MIB), pytest.raises(DataError) as err:
        dm.setup("test")
    one_line(err, archive, "member cifar-10-batches-bin/test_batch.bin",
             f"is {records:,} images", "of memory available")


def test_an_undecodable_zip_member_name_is_a_data_error(tmp_path):
    """A member name flagged UTF-8 that is not: zipfile raises UnicodeDecodeError."""
    path = tmp_path / "names.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header("|u1", (4, 4, 4)) + bytes(64))
    raw = bytearray(path.read_bytes().replace(b"x.npy", b"\x92.npy"))
    for offset in (raw.find(b"PK\x03\x04") + 6, raw.find(b"PK\x01\x02") + 8):
        raw[offset + 1] |= 0x08  # general purpose flag bit 11: "the name is UTF-8"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        ArrayDataModule(path=str(path))
    one_line(err, path, "is not a readable .npz file")


def test_an_unlistable_subfolder_is_not_silently_skipped(tmp_path):
    """A subfolder deeper than the system's path limit cannot be listed (ENAMETOOLONG): its
    images would be left out without a word."""
    folder = tmp_path / "images"
    for i in range(4):
        png(folder / f"{i}.png", seed=i)
    fd = os.open(folder, os.O_RDONLY)
    try:
        for _ in range(os.pathconf(folder, "PC_PATH_MAX") // 200 + 1):
            os.mkdir("d" * 200, dir_fd=fd)
            deeper = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    with pytest.raises(DataError) as err:
        FolderDataModule(path=str(folder), root=str(tmp_path / "root"))
    one_line(err, "cannot be listed (File name too long)", "fix its permissions")
