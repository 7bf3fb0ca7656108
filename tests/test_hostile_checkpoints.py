"""Hostile checkpoints and evaluation inputs (second round): a checkpoint chooses no data to read
and no files to write, corruption and impossible values are refused on every path that loads
weights (vae-eval, vae-sample, resume), impossible work is refused before it starts, and a full
disk is one line with exit code 74.

Each case runs the command as a user would (``cli.train`` / ``cli.evaluate`` / ``cli.sample`` in
this process, or a subprocess where the fault is the process's own: a FIFO, a file-size limit)
and asserts the documented exit code, the key or file named, no traceback, and nothing written.
"""

from __future__ import annotations

import json
import math
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from compose import REPO, copy_run
from test_hostile import FINISHED, TINY, finished_here, no_traceback, run, snapshot
from test_hostile_data import fifo

from vae_lightning import cli
from vae_lightning.checkpoints import CONFIG_KEY, DATA_KEY, read_checkpoint
from vae_lightning.data.frey import load_bundled_frey


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch Frey Face run (bundled data), written by this version (trained once
    per process for the test_hostile*.py modules: ``test_hostile.finished_here``)."""
    return finished_here(tmp_path_factory, FINISHED)


def _eval(args, tmp_path, monkeypatch, capsys):
    return run(cli.evaluate, [*args, "eval.k=2", "eval.device=cpu",
                              f"hydra.run.dir={tmp_path / 'eval-log'}"], monkeypatch, capsys,
               tmp_path)


def _sample(args, tmp_path, monkeypatch, capsys):
    return run(cli.sample, [*args, f"hydra.run.dir={tmp_path / 'sample-log'}"], monkeypatch,
               capsys, tmp_path)


def _resume(run_dir, tmp_path, monkeypatch, capsys, *extra):
    return run(cli.train, [*TINY, "trainer.max_epochs=4", *extra,
                           f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"],
               monkeypatch, capsys, tmp_path)


def _tampered(finished: Path, tmp_path: Path, change) -> Path:
    """A copy of the finished run whose last.ckpt ``change`` (a function of the checkpoint
    dict) rewrites, saved with valid checksums."""
    run_dir = copy_run(finished, tmp_path / "run")
    path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(path)
    checkpoint = change(checkpoint)
    torch.save(checkpoint, path)
    return run_dir


def _refused_everywhere(run_dir, words, tmp_path, monkeypatch, capsys):
    """vae-eval, vae-sample and a resume all refuse the run's last.ckpt with exit code 2, name
    ``words``, and write nothing."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    before = snapshot(run_dir)
    for result in (_eval([f"ckpt_path={ckpt}"], tmp_path, monkeypatch, capsys),
                   _sample([f"ckpt_path={ckpt}"], tmp_path, monkeypatch, capsys),
                   _resume(run_dir, tmp_path, monkeypatch, capsys)):
        no_traceback(result)
        assert result.code == 2, result
        for word in words:
            assert word in result.err, f"{word!r} not in {result.err}"
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------- corruption (item 4)
def test_a_flipped_bit_in_a_weight_is_refused_everywhere(finished, tmp_path, monkeypatch,
                                                         capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    path = run_dir / "checkpoints" / "last.ckpt"
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename),
                     key=lambda i: i.file_size)
    # The member's data start after its local header (30 bytes, then its name and extra field).
    name_length, extra_length = struct.unpack("<HH", raw[member.header_offset + 26:
                                                         member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length
    raw[start + member.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    _refused_everywhere(run_dir, ["corrupt", "checksum", str(path)], tmp_path, monkeypatch,
                        capsys)


# ----------------------------------------------------------------- impossible weights (item 5)
@pytest.mark.parametrize("kind, words", [
    ("nan", ["NaN or infinite"]), ("inf", ["NaN or infinite"]),
    ("huge64", ["NaN or infinite"]),  # a float64 1e300: finite in the file, inf as float32
    ("int", ["torch.int64", "float32"]), ("complex", ["complex", "not a real number type"]),
])
def test_non_finite_or_non_real_weights_are_refused_everywhere(kind, words, finished, tmp_path,
                                                               monkeypatch, capsys):
    def change(checkpoint):
        name = "encoder.net.0.weight"
        weight = checkpoint["state_dict"][name]
        if kind == "nan":
            weight[0, 0] = math.nan
        elif kind == "inf":
            weight[0, 0] = math.inf
        elif kind == "huge64":
            weight = weight.double()
            weight[0, 0] = 1e300
        else:
            weight = weight.long() if kind == "int" else weight.to(torch.complex64)
        checkpoint["state_dict"][name] = weight
        return checkpoint

    _refused_everywhere(_tampered(finished, tmp_path, change),
                        ["encoder.net.0.weight", *words], tmp_path, monkeypatch, capsys)


# -------------------------------------------------------------------- lying sizes (item 6)
def test_a_data_shape_that_is_not_the_networks_is_refused(finished, tmp_path, monkeypatch,
                                                         capsys):
    def change(checkpoint):
        checkpoint[CONFIG_KEY]["model"]["data_shape"] = [1000, 1000, 1000]
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    zeros, allocated = torch.zeros, []

    def spy(*size, **kwargs):  # the sizes of the real (not meta) tensors of zeros made
        tensor = zeros(*size, **kwargs)
        if not tensor.is_meta:
            allocated.append(tensor.numel())
        return tensor

    monkeypatch.setattr(torch, "zeros", spy)
    result = _eval([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path, monkeypatch,
                   capsys)
    no_traceback(result)
    assert result.code == 2 and "data_shape=[1000, 1000, 1000]" in result.err
    assert not (run_dir / "eval.json").exists()
    assert max(allocated, default=0) < 1000**3  # refused without making the 4 GB image


def test_a_model_latent_that_is_not_the_parts_is_refused_everywhere(finished, tmp_path,
                                                                     monkeypatch, capsys):
    """model.latent altered alone (the parts keep their resolved size): the model was built
    with z of one size for its checks and another for its parts (vae-sample: a shape error
    from inside)."""
    def change(checkpoint):
        checkpoint[CONFIG_KEY]["model"]["latent"] = 7
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    _refused_everywhere(run_dir, ["latent=7"], tmp_path, monkeypatch,
                        capsys)


def test_networks_larger_than_their_weights_are_refused_before_allocation(
        finished, tmp_path, monkeypatch, capsys):
    """A config asking for a 10^11-parameter network is compared with the weights on the meta
    device: refused with the shapes named, nothing allocated."""
    def change(checkpoint):
        checkpoint[CONFIG_KEY]["model"]["encoder"]["net"]["hidden"] = [10**8]
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    result = _eval([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path, monkeypatch,
                   capsys)
    no_traceback(result)
    assert result.code == 2 and "encoder.net.0.weight has shape [16, 560] in the file, " \
        "[100000000, 560] in the model" in result.err


# ----------------------------------------------------------------- malformed (item 15, 19)
@pytest.mark.parametrize("kind, words", [
    ("a list", ["holds a list"]),
    ("a string state_dict", ["state_dict is str"]),
    ("a dict _target_", ["model.encoder._target_ (a dict, not a class name)"]),
    ("a list _target_", ["model.encoder._target_ (a list, not a class name)"]),
    ("a string samples_seen", ["samples_seen is '500'"]),
    ("a bad argument", ["hidden", ">= 1"]),
])
def test_malformed_checkpoints_are_one_line(kind, words, finished, tmp_path, monkeypatch,
                                            capsys):
    def change(checkpoint):
        if kind == "a list":
            return [checkpoint["state_dict"]]
        if kind == "a string state_dict":
            checkpoint["state_dict"] = "weights"
        elif kind.endswith("_target_"):
            encoder = checkpoint[CONFIG_KEY]["model"]["encoder"]
            encoder["_target_"] = {"x": 1} if "dict" in kind else ["os.system"]
        elif kind == "a string samples_seen":
            checkpoint["samples_seen"] = "500"
        else:
            checkpoint[CONFIG_KEY]["model"]["encoder"]["net"]["hidden"] = [-1]
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = _eval([f"ckpt_path={ckpt}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2, result
    for word in words:
        assert word in result.err, f"{word!r} not in {result.err}"
    # A resume refuses it too (a changed config is named as a change of the run's settings).
    result = _resume(run_dir, tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and str(ckpt) in result.err


@pytest.mark.parametrize("target", ["vae_lightning.data.FolderDataModule",
                                    "vae_lightning.data.ArrayDataModule",
                                    "lightning.pytorch.loggers.CSVLogger"])
def test_a_class_of_another_config_group_in_the_model_is_refused_unread(
        target, finished, tmp_path, monkeypatch, capsys):
    """A data module (or a logger) named where a model part goes: each is one of this package's
    classes, but building it there reads (or writes) the path the file names; the model node
    builds only the model group's classes. Nothing under that path is opened."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "a.png").write_bytes(b"not an image")  # a read would say so in its message

    def change(checkpoint):
        checkpoint[CONFIG_KEY]["model"]["encoder"] = {
            "_target_": target, "path": str(secret), "root": str(tmp_path),
            "save_dir": str(secret / "written")}
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    result = _eval([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path,
                   monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and f"model.encoder._target_='{target}'" in result.err
    assert "a.png" not in result.err and sorted(p.name for p in secret.iterdir()) == ["a.png"]


def test_weights_of_another_shape_name_the_keys_and_shapes(finished, tmp_path, monkeypatch,
                                                           capsys):
    def change(checkpoint):
        checkpoint["state_dict"]["decoder.net.2.weight"] = torch.zeros(3, 16)
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    result = _eval([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path, monkeypatch,
                   capsys)
    no_traceback(result)
    assert result.code == 2
    assert "decoder.net.2.weight has shape [3, 16] in the file, [1120, 16] in the model" in \
        result.err


# ------------------------------------------------------- what the path names (items 10, 20)
def test_a_fifo_as_checkpoint_is_refused_not_waited_on(tmp_path, monkeypatch, capsys):
    """vae-eval and vae-train in this process; a command that blocks opening the FIFO is released
    by ``fifo``'s watchdog and the test fails (rather than hangs)."""
    with fifo(tmp_path / "pipe.ckpt", timeout=120) as pipe:
        for app, name, args in ((cli.evaluate, "eval", [f"ckpt_path={pipe}", "eval.k=2"]),
                                 (cli.train, "train", [*TINY, f"ckpt_path={pipe}"])):
            result = run(app, [*args, f"hydra.run.dir={tmp_path / name}"], monkeypatch, capsys,
                         tmp_path)
            assert result.code == 2, result.err[-2000:]
            assert "FIFO" in result.err, result.err[-2000:]
            no_traceback(result)


@pytest.mark.parametrize("path, words", [
    ("/dev/zero", ["/dev/zero is a character device", "expected a checkpoint"]),
    ("https://example.com/model.ckpt", ["is a URL", "nothing is downloaded"]),
])
def test_devices_and_urls_are_named_as_such(path, words, tmp_path, monkeypatch, capsys):
    result = _eval([f"ckpt_path={path}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2
    for word in words:
        assert word in result.err
    assert "weights_only" not in result.err


def test_a_run_s_results_json_as_checkpoint_names_the_run_s_checkpoint(finished, tmp_path,
                                                                        monkeypatch, capsys):
    """vae-eval ckpt_path=<run>/results.json: not 'corrupt or truncated', but the run's
    last.ckpt to use instead."""
    result = _eval([f"ckpt_path={finished / 'results.json'}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and "is not a checkpoint but another file" in result.err
    assert str(finished / "checkpoints" / "last.ckpt") in result.err, result.err


def test_a_run_directory_as_checkpoint_suggests_its_last_checkpoint(finished, tmp_path,
                                                                    monkeypatch, capsys):
    result = _eval([f"ckpt_path={finished}"], tmp_path, monkeypatch, capsys)
    assert result.code == 2
    assert f"e.g. {finished / 'checkpoints' / 'last.ckpt'}" in result.err


# ------------------------------------------------------ the data are the user's (item 1)
def test_eval_reads_no_path_or_switch_from_the_checkpoint(finished, tmp_path, monkeypatch,
                                                          capsys):
    """The checkpoint's data config names another folder, downloading and 50 workers: the
    evaluation reads the data where the run's own record says (the bundled Frey Face), downloads
    nothing, starts no worker, creates nothing, and reports the data matching."""
    evil = tmp_path / "elsewhere"

    def change(checkpoint):
        checkpoint[CONFIG_KEY]["data"].update(
            root=str(evil), path=str(evil / "faces.mat"), download=True, num_workers=50)
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    from vae_lightning.checkpoint_data import find_data

    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    datamodule, source = find_data(checkpoint[CONFIG_KEY],
                                   str(run_dir / "checkpoints" / "last.ckpt"), "eval")
    assert datamodule.num_workers == 0 and datamodule.download is False
    assert datamodule.path is None and str(evil) not in json.dumps(source)
    result = _eval([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path, monkeypatch,
                   capsys)
    no_traceback(result)
    assert result.code == 0, result
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["data_matches_checkpoint"] is True and saved["n"] == 200
    assert not evil.exists()


def test_other_data_are_refused_unless_allowed(finished, tmp_path, monkeypatch, capsys):
    """Frey Face faces in another order: the test split's SHA-256 differs from the checkpoint's
    record. Refused (exit 2, nothing written), then evaluated with eval.allow_other_data=true,
    which eval.json records."""
    faces = load_bundled_frey()
    other = tmp_path / "frey_shuffled.mat"
    scipy.io.savemat(other, {"ff": faces[:, np.random.default_rng(1).permutation(1965)]})
    ckpt = finished / "checkpoints" / "last.ckpt"
    out = tmp_path / "out"
    result = _eval([f"ckpt_path={ckpt}", f"eval.data_path={other}", f"output_dir={out}"],
                   tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and "not the data" in result.err and "allow_other_data" in result.err
    assert not (out / "eval.json").exists()
    result = _eval([f"ckpt_path={ckpt}", f"eval.data_path={other}", f"output_dir={out}",
                    "eval.allow_other_data=true"], tmp_path, monkeypatch, capsys)
    assert result.code == 0, result
    saved = json.loads((out / "eval.json").read_text())
    assert saved["data_matches_checkpoint"] is False
    assert saved["data_source"]["path"] == "command line"


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_data_of_another_shape_are_refused_even_when_other_data_are_allowed(
        command, finished, tmp_path, monkeypatch, capsys):
    """allow_other_data lets a model read other images of its shape; images of another shape
    its networks cannot take: one line (exit 2), not a matrix-shape traceback."""
    def change(checkpoint):
        checkpoint[DATA_KEY]["shape"] = [3, 8, 8]  # the model's record of its images
        return checkpoint

    ckpt = _tampered(finished, tmp_path, change) / "checkpoints" / "last.ckpt"
    if command == "eval":
        result = _eval([f"ckpt_path={ckpt}", "eval.allow_other_data=true", "eval.k=2"],
                       tmp_path, monkeypatch, capsys)
    else:
        result = _sample([f"ckpt_path={ckpt}", "allow_other_data=true", "sampler=gmm",
                          f"output_dir={tmp_path / 'out'}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and "images of shape [1, 28, 20]" in result.err, result.err[-2000:]
    assert "[3, 8, 8]" in result.err


def test_a_resume_on_other_data_is_refused(finished, tmp_path, monkeypatch, capsys):
    faces = load_bundled_frey()
    other = tmp_path / "frey_shuffled.mat"
    scipy.io.savemat(other, {"ff": faces[:, np.random.default_rng(1).permutation(1965)]})
    run_dir = copy_run(finished, tmp_path / "run")
    before = snapshot(run_dir)
    result = _resume(run_dir, tmp_path, monkeypatch, capsys, f"data.path={other}")
    no_traceback(result)
    assert result.code == 2 and "other data" in result.err and "train split" in result.err
    after = snapshot(run_dir)
    # The data are read to be checked; the log says which file was read; nothing else changes.
    log = after.pop("train.log")
    assert log.startswith(before.pop("train.log")) and b"Seed set" not in log.split(b"\n")[-2]
    assert after == before


def test_checkpoints_record_the_data_identity(finished):
    identity = read_checkpoint(finished / "checkpoints" / "last.ckpt")[DATA_KEY]
    assert identity["data"] == "frey" and identity["shape"] == [1, 28, 20]
    assert {s: v["size"] for s, v in identity["splits"].items()} == {
        "train": 1565, "val": 200, "test": 200}


# -------------------------------------------------------------- unbounded work (item 11)
def test_an_evaluation_that_cannot_finish_is_refused_before_it_starts(finished, tmp_path,
                                                                      monkeypatch, capsys):
    result = run(cli.evaluate, [f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}",
                                "eval.k=1000000000000", "eval.device=cpu",
                                f"hydra.run.dir={tmp_path / 'log'}"], monkeypatch, capsys,
                 tmp_path)
    no_traceback(result)
    assert result.code == 2 and "would take about" in result.err
    assert "eval.max_hours=24" in result.err
    assert not (finished / "eval.json").exists() or "1000000000000" not in (
        finished / "eval.json").read_text()


def test_a_sample_larger_than_the_disk_is_refused(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "samples"
    result = _sample([f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}", "n=1000000000000",
                      f"output_dir={out}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and "GiB" in result.err and "Lower n" in result.err
    assert not out.exists()


def test_many_samples_are_written_in_bounded_memory(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "samples"
    result = _sample([f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}", "n=2500",
                      f"output_dir={out}"], tmp_path, monkeypatch, capsys)
    assert result.code == 0, result
    array = np.load(out / "samples.npy", mmap_mode="r")
    assert array.shape == (2500, 1, 28, 20) and np.isfinite(array[-5:]).all()
    assert (out / "samples.png").is_file() and not (out / "samples.npy.tmp").exists()


# ------------------------------------------------------------------ options (item 16)
@pytest.mark.parametrize("args, words", [
    *([] if torch.cuda.is_available() else [(["device=cuda"], ["device='cuda'", "CUDA"])]),
    (["device=banana"], ["device='banana'", "expected auto, cpu"]),
])
def test_vae_sample_refuses_bad_devices(args, words, finished, tmp_path, monkeypatch, capsys):
    result = _sample([f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}", *args], tmp_path,
                     monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2
    for word in words:
        assert word in result.err


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_an_output_dir_that_is_a_file_is_refused_before_any_work(command, finished, tmp_path,
                                                                 monkeypatch, capsys):
    file = tmp_path / "a-file"
    file.write_text("mine")
    ckpt = f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}"
    for target in (file, file / "below"):
        args = [ckpt, f"output_dir={target}"]
        result = (_eval(args, tmp_path, monkeypatch, capsys) if command == "eval"
                  else _sample(args, tmp_path, monkeypatch, capsys))
        no_traceback(result)
        assert result.code == 2 and "is a file, not a directory" in result.err
        assert "eval k=" not in result.err  # refused before the evaluation's progress bar
    assert file.read_text() == "mine"


@pytest.mark.parametrize("command", ["eval", "sample", "train"])
def test_an_output_dir_where_nothing_can_be_created_is_exit_code_74_before_any_work(
        command, finished, tmp_path, monkeypatch, capsys):
    """/proc, where even root (to whom os.access says yes) creates nothing: refused by trying,
    with the one line and exit code 74, not a traceback at the first write after the work."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc pseudo-filesystem here")
    target = Path("/proc/vae-lightning-test/out")
    ckpt = f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}"
    if command == "train":
        result = run(cli.train, [*TINY, f"hydra.run.dir={target}"], monkeypatch, capsys,
                     tmp_path)
    else:
        call = _eval if command == "eval" else _sample
        result = call([ckpt, f"output_dir={target}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 74 and "/proc is not writable" in result.err, result.err[-2000:]
    assert "eval k=" not in result.err


# ---------------------------------------------------------------- a full disk (item 13)
def _mount_tmpfs(directory: Path, size: str, read_only: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")


def _unmount(directory: Path) -> None:
    # Lazily: a run refused in this process keeps its run directory's lock (an open descriptor)
    # as the command, which ends there, would (vae_lightning.rundir.release: when a job ends).
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def test_a_full_disk_is_exit_code_74_in_one_line(tmp_path, monkeypatch, capsys):
    """A real 160 KiB filesystem as the run directory: the record fits, the first checkpoint
    does not; torch's writer fails inside its zip container."""
    run_dir = tmp_path / "small"
    _mount_tmpfs(run_dir, "160k")
    try:
        result = run(cli.train, [*TINY, "model.encoder.net.hidden=[64]", "trainer.max_epochs=1",
                                 f"hydra.run.dir={run_dir}"], monkeypatch, capsys, tmp_path)
        assert result.code == 74, result.err[-3000:]
        no_traceback(result)
        assert "error: Cannot write" in result.err, result.err[-3000:]
        assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".*.tmp"))
    finally:
        _unmount(run_dir)


def test_a_file_size_limit_is_exit_code_74_in_one_line(tmp_path):
    """``ulimit -f``: the checkpoint write fails with EFBIG (Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY,
                           "model.encoder.net.hidden=[64]", "trainer.max_epochs=1",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "error: Cannot write" in proc.stderr


def test_eval_into_a_read_only_directory_is_exit_code_74_before_the_work(finished, tmp_path,
                                                                         monkeypatch, capsys):
    out = tmp_path / "ro"
    _mount_tmpfs(out, "1m", read_only=True)
    try:
        result = _eval([f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}",
                        f"output_dir={out}"], tmp_path, monkeypatch, capsys)
        no_traceback(result)
        assert result.code == 74 and "not writable" in result.err
        assert "resume" not in result.err.split("error:")[-1].split(".")[0]
    finally:
        _unmount(out)


# ------------------------------------------- posteriors without a finite KL (item 8)
def test_a_student_t_without_a_finite_variance_under_a_gaussian_prior_is_refused(
        tmp_path, monkeypatch, capsys):
    result = run(cli.train, [*TINY, "model/posterior=student_t", "model.encoder.posterior.df=1.5",
                             "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2
    assert "infinite" in result.err and "df > 2" in result.err and "model/prior=vamp" in \
        result.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_cauchy_posterior_under_a_vampprior_trains_and_counts_by_location(tmp_path):
    from models import binary_images, small_vae

    from vae_lightning.log_likelihood import evaluate
    from vae_lightning.posteriors import StudentT
    from vae_lightning.priors import VampPrior

    model = small_vae(posterior=StudentT(df=1.0), prior=VampPrior)
    x = binary_images(40)
    q = model.encoder(x)
    assert torch.isnan(q.mean).all()  # the Cauchy has no mean
    assert torch.equal(model.encoder.location(q), q.base_dist.loc)
    assert torch.isfinite(model.encoder.location(q)).all()  # what active units are counted on
    result = evaluate(model, [x], k=4)
    assert result["latent"] == 2 and result["active_units"] in (0, 1, 2)
    assert math.isfinite(result["iw"].nats)


# ----------------------------------------------------------- bits/dim (item 7)
def test_bits_per_dim_only_for_discrete_data(finished, tmp_path):
    results = json.loads((finished / "results.json").read_text())  # Frey Face: continuous
    assert not any("bits_per_dim" in key for key in results)
    from vae_lightning.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian

    assert Bernoulli().discrete and DiscretizedLogistic().discrete
    assert not Gaussian().discrete


# ----------------------------------------------------------- divergence (item 9)
def test_a_near_zero_bound_with_noise_is_not_divergence(tmp_path, monkeypatch, capsys):
    """60 random 16x16 RGB images, one epoch: the bound of the continuous Bernoulli sits near 0
    nats and moves by a few nats; the run completes."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.integers(0, 256, (60, 16, 16, 3), np.uint8))
    result = run(cli.train, ["data=array", f"data.path={tmp_path / 'images.npy'}",
                             "data.batch_size=10", "trainer.max_epochs=1", *TINY,
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 0, result
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "completed"
    assert abs(saved["initial/val_elbo"]) < 768  # near zero against D = 768 values


def test_the_divergence_floor_scales_with_the_data_dimension(tmp_path):
    from omegaconf import OmegaConf

    from vae_lightning.errors import Diverged
    from vae_lightning.train import _judge

    cfg = OmegaConf.create({"output_dir": str(tmp_path)})
    assert _judge({"val/elbo": -3.5}, -1.7, cfg, write=False, dims=768)["status"] == "completed"
    with pytest.raises(Diverged, match="D = 768"):
        _judge({"val/elbo": -800.0}, -1.7, cfg, write=False, dims=768)
    with pytest.raises(Diverged):  # b0 - max(|b0|, D) = -544 - 784
        _judge({"val/elbo": -1400.0}, -544.0, cfg, write=False, dims=784)
    assert _judge({"val/elbo": -1200.0}, -544.0, cfg, write=False, dims=784)["status"] == \
        "completed"
    # A bound that is not finite is said so, not "nan nats, below -1089".
    with pytest.raises(Diverged, match=r"val/elbo is not finite \(nan\); the floor is -1328"):
        _judge({"val/elbo": math.nan}, -544.0, cfg, write=False, dims=784)
    with pytest.raises(Diverged, match=r"val/elbo = -1400 nats, below -1328; the floor"):
        _judge({"val/elbo": -1400.0}, -544.0, cfg, write=False, dims=784)


# ------------------------------------------------------- weights that overflow (fourth round)
@pytest.mark.parametrize("command, part", [("eval", "decoder"), ("sample", "decoder"),
                                           ("encode", "encoder")])
def test_finite_weights_that_overflow_are_exit_code_3_with_nothing_written(
        command, part, finished, tmp_path, monkeypatch, capsys):
    """Weights that are finite but huge (a run that blew up without a NaN loss, or a tampered
    file) make the model's outputs NaN or infinite: each command says so in one line with exit
    code 3 and writes no eval.json, samples or locations holding NaN."""
    def change(checkpoint):
        state = checkpoint["state_dict"]
        name = next(k for k in state if k.startswith(f"{part}.") and k.endswith("weight"))
        state[name] = torch.full_like(state[name], 3e38)
        return checkpoint

    run_dir = _tampered(finished, tmp_path, change)
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    before = snapshot(run_dir)
    if command == "eval":
        result = _eval([ckpt], tmp_path, monkeypatch, capsys)
    elif command == "sample":
        result = _sample([ckpt, "n=4"], tmp_path, monkeypatch, capsys)
    else:
        result = run(cli.encode, [ckpt, f"hydra.run.dir={tmp_path / 'encode-log'}"],
                     monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 3, result
    assert "not finite" in result.err and "largest parameter" in result.err, result.err
    assert snapshot(run_dir) == before


def test_vae_eval_refuses_other_data_off_the_likelihood_s_grid(tmp_path, monkeypatch, capsys):
    """A discretized likelihood trained on 8-bit pixels, evaluated on other float pixels of its
    shape (eval.allow_other_data): pixels off the grid k / 255 would share bins and the bound
    would be no log-probability, so vae-eval refuses them as training does (exit 2)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "bytes.npy", rng.integers(0, 256, (60, 6, 6), dtype=np.uint8))
    np.save(tmp_path / "floats.npy", rng.random((60, 6, 6), dtype=np.float32))
    run_dir = tmp_path / "run"
    result = run(cli.train, [*TINY, "data=array", f"data.path={tmp_path / 'bytes.npy'}",
                             "model/likelihood=discretized_logistic", "trainer.max_epochs=1",
                             f"hydra.run.dir={run_dir}"], monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-2000:]
    result = _eval([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                    f"eval.data_path={tmp_path / 'floats.npy'}", "eval.allow_other_data=true",
                    f"output_dir={tmp_path / 'out'}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and "test images hold pixel values off that grid" in result.err, (
        result.err[-2000:])
    assert not (tmp_path / "out" / "eval.json").exists()


def test_a_data_location_the_data_set_does_not_read_is_refused_not_ignored(tmp_path):
    """eval.data_path for a model trained on MNIST (read from its folder under data.root, not
    from a file) was ignored: the MNIST test split was scored, and the user thought their own
    file was. Refused, naming the key and the one MNIST reads."""
    from vae_lightning.checkpoint_data import find_data
    from vae_lightning.errors import ConfigError

    config = {"data": {"_target_": "vae_lightning.data.MNISTDataModule", "root": "data"}}
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"eval.data_path='mine.npy': the model was trained on "
                                          r"MNISTDataModule.* eval.data_root"):
        find_data(config, str(ckpt), "eval", data_path="mine.npy")


def test_a_key_of_vae_eval_s_eval_node_given_at_the_top_is_named(finished, tmp_path,
                                                                  monkeypatch, capsys):
    """vae-eval k=10 (eval.k meant): the message suggests eval.k, the node below that has it."""
    result = run(cli.evaluate, [f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}", "k=10",
                                f"hydra.run.dir={tmp_path / 'log'}"], monkeypatch, capsys,
                 tmp_path)
    no_traceback(result)
    assert result.code == 2 and "Did you mean eval.k?" in result.err, result.err


def test_a_pixelcnn_sampler_for_a_model_without_a_codebook_is_refused_before_any_fit(
        finished, tmp_path, monkeypatch, capsys):
    """sampler=pixelcnn is a prior over a VQ-VAE's code maps: for a Gaussian VAE it is refused
    in one line, naming the samplers that fit, before the training images are read."""
    result = _sample([f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}", "sampler=pixelcnn",
                      f"output_dir={tmp_path / 'out'}"], tmp_path, monkeypatch, capsys)
    no_traceback(result)
    assert result.code == 2 and "model=vq_vae" in result.err and "sampler=gmm" in result.err
    assert "Fitting" not in result.out + result.err
