"""Hostile input: bad configs, data files, checkpoints, run directories and signals.

Each case runs the command as a user would (vae-train / vae-eval, in this process through the
same entry points, or in a subprocess where a signal or a second process is involved) and
asserts: no traceback, the documented exit code (docs/reliability.md, "Exit codes"), the key or
file named, and nothing lost or rewritten.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import scipy.io
import torch
from compose import REPO, copy_run, open_paths

from vae_lightning import cli
from vae_lightning.checkpoints import CONFIG_KEY, read_checkpoint
from vae_lightning.data.idx import write_idx

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures.n_points=0"]
TINY = ["model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
        "logger=none", *QUIET]


class Result(NamedTuple):
    code: int
    out: str
    err: str


def run(app, args: list[str], monkeypatch, capsys, cwd: Path) -> Result:
    """The command ``app`` (cli.train, cli.evaluate) with ``args``, in this process."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["vae", *args])
    capsys.readouterr()
    code = 0
    try:
        app()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err[-3000:]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- configs
# (overrides, words of the message); each is refused with exit code 2 before any training.
BAD_CONFIGS = [
    (["model.latent=0"], ["model.latent=0", "integer >= 1"]),
    (["model.latent=-3"], ["model.latent=-3"]),
    (["model.latent=abc"], ["model.latent", "abc"]),
    (["model.latent=1000000000"], ["parameters", "GiB", "model.latent"]),
    (["model.encoder.net.hidden=[100000000]"], ["parameters", "GiB", "model.encoder"]),
    (["model.encoder.net.hidden=[0]"], ["model.encoder.net.hidden=[0]"]),
    (["model.encoder.net.hidden=abc"], ["model.encoder.net.hidden", "abc"]),
    (["model.encoder.net.activation=swish"], ["model.encoder.net.activation='swish'", "tanh"]),
    (["model.decoder.net.init_std=-1"], ["model.decoder.net.init_std=-1"]),
    (["seed=-1"], ["seed=-1", ">= 0"]),
    # Checkpoints and results apart from the run's record (.hydra/), where vae-eval found no
    # record of the data's path.
    (["output_dir=/nonexistent-vae-test/elsewhere"],
     ["output_dir=/nonexistent-vae-test/elsewhere is not the run directory", "hydra.run.dir="
      "/nonexistent-vae-test/elsewhere instead"]),
    # The job would run inside its run directory, where its relative paths name other files.
    (["hydra.job.chdir=true"], ["hydra.job.chdir=true is not supported", "data.path",
                                "Leave hydra.job.chdir false"]),
    (["seed=1.5"], ["seed=1.5"]),
    (["seed=abc"], ["seed='abc'"]),
    (["model/prior=mog", "model.prior.n_components=0"], ["model.prior.n_components=0"]),
    (["model/prior=vamp", "model.prior.n_components=-2"], ["model.prior.n_components=-2"]),
    (["model/posterior=student_t", "model.encoder.posterior.df=0"],
     ["model.encoder.posterior.df=0"]),
    (["model.objective.kl=exact"], ["model.objective.kl='exact'", "auto, analytic, mc"]),
    (["model.objective.kl=analytic", "model/prior=mog"], ["kl='analytic'", "closed form"]),
    (["model/objective=wake_sleep", "model/prior=vamp"], ["VampPrior", "wake-sleep"]),
    (["model/objective=iwae", "model.objective.k=0"], ["model.objective.k=0"]),
    (["model.objective.n_samples=0"], ["model.objective.n_samples=0"]),
    (["model.objective.beta=-1"], ["model.objective.beta=-1"]),
    (["model.objective.warmup_steps=-5"], ["model.objective.warmup_steps=-5"]),
    (["model/optimizer=sgdd"], ["model/optimizer", "sgdd", "adam"]),
    (["model.optimizer.lr=-0.1"], ["model.optimizer", "-0.1"]),
    (["model.optimizer.lr=abc"], ["model.optimizer", "abc"]),
    (["model.optimizer.weight_decay=-1"], ["model.optimizer", "weight_decay"]),
    (["model.optimizer.fused=maybe"], ["model.optimizer.fused='maybe'"]),
    (["+model.optimizer.momentum=0.9"], ["model.optimizer.momentum", "Adam"]),
    (["data=cifar"], ["data/cifar", "frey", "mnist"]),
    (["data.batch_size=0"], ["data.batch_size=0"]),
    (["data.batch_size=-1"], ["data.batch_size=-1"]),
    (["data.eval_batch_size=0"], ["data.eval_batch_size=0"]),
    (["data.val_size=-1"], ["data.val_size=-1"]),
    (["data.val_size=2000"], ["test_size", "1965"]),
    (["data.binarize=dynamic"], ["data.binarize='dynamic'", "none"]),
    (["data=mnist", "data.binarize=sometimes"], ["data.binarize='sometimes'", "dynamic"]),
    (["data.scale=10"], ["data.scale=10", ">= 255"]),
    (["data.num_workers=-1"], ["data.num_workers=-1"]),
    (["data.steps_per_batch=0"], ["data.steps_per_batch=0"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0"]),
    (["trainer.max_samples=0"], ["trainer.max_samples=0"]),
    (["trainer.max_samples=abc"], ["trainer.max_samples='abc'"]),
    (["+trainer.max_epoch=3"], ["trainer.max_epoch", "max_epochs"]),
    (["trainer.precision=17"], ["trainer.precision", "17"]),
    (["model.optimizer.lr=fast"], ["model.optimizer.lr='fast' is not a number", "0.001"]),
    # a key of another option of the group: the options that have it, chosen first
    (["model.objective.k=5"], ["k is a key of model/objective=", "iwae", "choose one first"]),
    (["trainer.max_samples=1e4", "trainer.max_epochs=1"],
     ["trainer.max_epochs=1 would be ignored", "trainer.max_samples=null"]),
    (["model/objective=iwae", "model/objective/kl_schedule=linear"],
     ["the model/objective chosen has no kl_schedule", "elbo", "beta_tc"]),
    (["model.objective.K=5"], ["k is a key of model/objective=", "model.objective.k=5"]),
    # no "+" where the node's class would refuse the added key
    (["model.encoder.net.dropout=0.1"], ["no key dropout", "MLP takes no other"]),
    # an argument the class takes that its config leaves out: "+" adds it (it was "Adam takes
    # no other"); one the code gives (MLP's in_shape) is not offered
    (["model.optimizer.betas=[0.9,0.99]"],
     ["model.optimizer has no key betas, but torch.optim.Adam takes betas: add it with "
      "+model.optimizer.betas=[0.9,0.99]"]),
    (["model.encoder.net.in_shape=[3]"], ["no key in_shape", "MLP takes no other"]),
    (["trainer.devices=0"], ["trainer", "devices"]),
    (["logger=nosuch"], ["logger/nosuch", "csv", "wandb"]),
    (["callbacks.bound_curve.points_per_decade=0"],
     ["callbacks.bound_curve.points_per_decade=0"]),
    (["callbacks.bound_curve.splits=[]"], ["splits", "train, val, test"]),
    (["callbacks.figures.grid=0"], ["callbacks.figures.grid=0"]),
    (["model.latnt=2"], ["model.latnt"]),
    (["ckpt_path=/no/such.ckpt"], ["/no/such.ckpt", "does not exist"]),
    (["ckpt_path=last"], ["ckpt_path=last", "no", "last.ckpt"]),
]
if not torch.cuda.is_available():
    BAD_CONFIGS.append((["trainer=gpu"], ["trainer", "gpu"]))
    BAD_CONFIGS.append((["trainer.precision=16-mixed"], ["trainer.precision", "16-mixed",
                                                          "GPU only", "bf16-mixed"]))
BAD_CONFIGS.append((["trainer.accelerator=cpu", "trainer.precision=16-mixed"],
                    ["trainer.precision", "16-mixed", "bf16-mixed"]))


@pytest.mark.parametrize("overrides, words", BAD_CONFIGS, ids=lambda v: " ".join(v))
def test_a_bad_config_is_one_error_line_with_exit_code_2(overrides, words, tmp_path,
                                                          monkeypatch, capsys):
    result = run(cli.train, [*TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert result.err.startswith("error: "), result.err
    for word in words:
        assert word in result.err, f"{word!r} not in {result.err}"
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_directory_as_checkpoint_is_named_as_such(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_dir.ckpt").mkdir()
    result = run(cli.train, [f"ckpt_path={tmp_path / 'a_dir.ckpt'}", *TINY,
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2 and "is a directory" in result.err


def test_a_null_callback_is_left_out(tmp_path, monkeypatch, capsys):
    result = run(cli.train, ["callbacks.bound_curve=null", "trainer.max_epochs=1", *TINY,
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 0 and (tmp_path / "run" / "results.json").is_file()
    assert not (tmp_path / "run" / "curve.json").exists()


# -------------------------------------------------------------------------------------- data
def _mnist_files(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, n).astype(np.uint8))
    return folder


MNIST = ["data=mnist", "data.download=false", "data.val_size=50"]


def _data_case(name: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """(overrides, words) of a data set that is bad in the way ``name`` says."""
    if name == "frey path is a directory":
        (tmp_path / "faces").mkdir()
        return [f"data.path={tmp_path / 'faces'}"], ["data.path", "is a directory"]
    if name == "frey mat of random bytes":
        (tmp_path / "ff.mat").write_bytes(os.urandom(2000))
        return [f"data.path={tmp_path / 'ff.mat'}"], ["ff.mat", "MATLAB"]
    if name == "frey mat without ff":
        scipy.io.savemat(tmp_path / "ff.mat", {"faces": np.zeros((560, 1965), np.uint8)})
        return [f"data.path={tmp_path / 'ff.mat'}"], ["ff.mat", "'ff'", "faces"]
    if name == "frey mat of another shape":
        scipy.io.savemat(tmp_path / "ff.mat", {"ff": np.zeros((10, 10), np.uint8)})
        return [f"data.path={tmp_path / 'ff.mat'}"], ["ff.mat", "(560, 1965)"]
    if name == "data root is a file":
        (tmp_path / "root").write_text("not a directory")
        return ["data=mnist", f"data.root={tmp_path / 'root'}"], ["data.root=", "is a file"]
    if name == "mnist directory instead of a file":
        folder = _mnist_files(tmp_path)
        (folder / "train-images-idx3-ubyte.gz").unlink()
        (folder / "train-images-idx3-ubyte.gz").mkdir()
        return [*MNIST, f"data.root={tmp_path}"], ["train-images-idx3-ubyte.gz", "directory"]
    if name == "mnist missing offline":
        return [*MNIST, f"data.root={tmp_path}"], ["Missing", "train-images-idx3-ubyte.gz"]
    if name == "mnist truncated test images":
        folder = _mnist_files(tmp_path)
        path = folder / "t10k-images-idx3-ubyte.gz"
        write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((100, 28, 28), np.uint8))
        path.unlink()
        raw = (folder / "t10k-images-idx3-ubyte").read_bytes()
        (folder / "t10k-images-idx3-ubyte").write_bytes(raw[:5000])
        return [*MNIST, f"data.root={tmp_path}"], ["t10k-images-idx3-ubyte", "truncated"]
    if name == "mnist garbage labels":
        folder = _mnist_files(tmp_path)
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage" * 10)
        return [*MNIST, f"data.root={tmp_path}"], ["train-labels-idx1-ubyte.gz"]
    if name == "mnist labels of another length":
        folder = _mnist_files(tmp_path)
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
        return [*MNIST, f"data.root={tmp_path}"], ["t10k", "100 images", "7 labels"]
    if name == "frey k/256 under a likelihood of k/255":
        return ["model/likelihood=discretized_logistic", "data.scale=256"], [
            "data.scale=256", "model.decoder.likelihood.bins=257"]
    if name == "float pixels off the likelihood's grid":
        np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 6, 6), np.float32))
        return ["data=array", f"data.path={tmp_path / 'x.npy'}",
                "model/likelihood=discretized_logistic"], ["bins=256", "off that grid"]
    raise AssertionError(name)


DATA_CASES = ["frey path is a directory", "frey mat of random bytes", "frey mat without ff",
              "frey mat of another shape", "data root is a file",
              "mnist directory instead of a file", "mnist missing offline",
              "mnist truncated test images", "mnist garbage labels",
              "mnist labels of another length", "frey k/256 under a likelihood of k/255",
              "float pixels off the likelihood's grid"]


@pytest.mark.parametrize("name", DATA_CASES)
def test_a_bad_data_file_is_one_error_line_before_training(name, tmp_path, monkeypatch, capsys):
    overrides, words = _data_case(name, tmp_path)
    result = run(cli.train, [*TINY, *overrides, "trainer.max_epochs=1",
                             f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    for word in words:
        assert word in result.err, f"{word!r} not in {result.err}"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_frey_source_used_is_said(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "nonexistent"))
    result = run(cli.train, [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-2000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "bundled" in log and str(tmp_path / "nonexistent") in log


# ------------------------------------------------------------------------------- checkpoints
_FINISHED: dict[tuple[str, ...], Path] = {}


def finished_here(tmp_path_factory, overrides: list[str]) -> Path:
    """A copy of the directory of ``vae-train <overrides>`` run to its end, as a user runs it
    (``cli.train``: Hydra's records, the log, the checkpoints), in this process; trained once per
    process for each ``overrides`` and copied for each caller, so that the modules that read a
    finished run (test_hostile*.py) share one training and still cannot see each other's
    changes."""
    key = tuple(overrides)
    if key not in _FINISHED:
        directory = tmp_path_factory.mktemp("finished-once") / "run"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny network: faster on one thread on a busy machine
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(directory.parent)
            patch.setattr(sys, "argv", ["vae-train", *overrides, f"hydra.run.dir={directory}"])
            patch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored afterwards
            try:
                cli.train()
            except SystemExit as exit_:
                assert exit_.code in (0, None), exit_
            finally:
                torch.set_num_threads(threads)
        assert (directory / "results.json").is_file() and (directory / "train.log").is_file()
        _FINISHED[key] = directory
    return copy_run(_FINISHED[key], tmp_path_factory.mktemp("finished") / "run")


FINISHED = [*TINY, "trainer.max_epochs=2"]  # the finished run the hostile tests read


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch run's directory."""
    return finished_here(tmp_path_factory, FINISHED)




class _RunsCode:
    """A pickle that runs code when loaded (it would create ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _bad_checkpoint(kind: str, finished: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / f"{kind.replace(' ', '_')}.ckpt"
    good = finished / "checkpoints" / "last.ckpt"
    if kind == "garbage":
        path.write_bytes(os.urandom(3000))
        return path, ["corrupt or truncated"]
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:4000])
        return path, ["corrupt or truncated"]
    if kind == "empty":
        path.write_bytes(b"")
        return path, ["cannot be read"]
    if kind == "code in the pickle":
        with open(path, "wb") as file:
            pickle.dump({"state_dict": _RunsCode(tmp_path / "pickle-ran")}, file)
        return path, ["cannot be read"]
    checkpoint = read_checkpoint(good)
    if kind == "code in the config":
        checkpoint[CONFIG_KEY]["model"]["encoder"].update(
            {"_target_": "builtins.open", "file": str(tmp_path / "config-ran"), "mode": "w"})
        words = ["builtins.open", "untrusted"]
    elif kind == "weights of another model":
        checkpoint["state_dict"] = {k: torch.zeros(3) for k in checkpoint["state_dict"]}
        words = ["weights do not fit"]
    elif kind == "no config":
        del checkpoint[CONFIG_KEY]
        words = ["no vae-lightning run configuration"]
    else:
        raise AssertionError(kind)
    torch.save(checkpoint, path)
    return path, words


CHECKPOINTS = ["garbage", "truncated", "empty", "code in the pickle", "code in the config",
               "weights of another model", "no config"]


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_eval_refuses_a_bad_checkpoint_in_one_line(kind, finished, tmp_path, monkeypatch, capsys):
    path, words = _bad_checkpoint(kind, finished, tmp_path)
    result = run(cli.evaluate, [f"ckpt_path={path}", "eval.k=2",
                                f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch, capsys,
                 tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    for word in [*words, str(path)]:
        assert word in result.err, f"{word!r} not in {result.err}"
    assert "weights_only=False" not in result.err  # never advise running the file's code
    assert not (tmp_path / "pickle-ran").exists() and not (tmp_path / "config-ran").exists()


@pytest.mark.parametrize("overrides, words", [
    (["eval.k=0"], ["eval.k=0"]),
    (["eval.chunk=-1"], ["eval.chunk=-1"]),
    (["eval.split=train"], ["eval.split='train'", "test, val"]),
    (["eval.device=banana"], ["device", "banana"]),
    *([] if torch.cuda.is_available() else [(["eval.device=cuda"], ["device", "CUDA"])]),
    (["+eval.kk=3"], ["eval.kk"]),
])
def test_eval_refuses_bad_options(overrides, words, finished, tmp_path, monkeypatch, capsys):
    result = run(cli.evaluate, [f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}",
                                *overrides, f"hydra.run.dir={tmp_path / 'eval'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2 and result.err.startswith("error: ")
    for word in words:
        assert word in result.err


def test_eval_without_a_checkpoint_names_the_key(tmp_path, monkeypatch, capsys):
    result = run(cli.evaluate, [f"hydra.run.dir={tmp_path / 'eval'}"], monkeypatch, capsys,
                 tmp_path)
    no_traceback(result)
    assert result.code == 2 and "ckpt_path is required" in result.err


@pytest.mark.parametrize("command", ["evaluate", "sample", "encode"])
def test_ckpt_path_last_outside_training_says_to_name_the_file(command, tmp_path, monkeypatch,
                                                              capsys):
    """vae-train's ckpt_path=last given to vae-eval / -sample / -encode was "Checkpoint last
    does not exist.": now the line says that the word is training's and gives the command's
    example; a file named last in the directory run from is still read as the checkpoint."""
    result = run(getattr(cli, command), ["ckpt_path=last", f"hydra.run.dir={tmp_path / 'out'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    name = {"evaluate": "eval"}.get(command, command)
    assert result.code == 2 and result.err.startswith(
        "error: ckpt_path=last is vae-train's word for resuming a run; this command reads the "
        f"checkpoint file you name, e.g. vae-{name} ckpt_path=<run>/checkpoints/last.ckpt"), \
        result.err
    (tmp_path / "last").write_bytes(b"not a checkpoint")
    result = run(getattr(cli, command), ["ckpt_path=last", f"hydra.run.dir={tmp_path / 'out'}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 2 and "is not a checkpoint but another file" in result.err, result.err


# ---------------------------------------------------------------------------- run directory
def test_a_refused_resume_leaves_the_run_as_it_was(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    before = snapshot(run_dir)
    result = run(cli.train, [*TINY, "model.latent=5", "trainer.max_epochs=3",
                             f"hydra.run.dir={run_dir}", "ckpt_path=last"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2 and "model.latent=2 (this run: 5)" in result.err
    assert "model.latent=2" in result.err.split("started with:")[1]  # the original overrides
    after = snapshot(run_dir)
    assert after == before, set(after) ^ set(before)


def test_a_resume_with_another_seed_is_refused(finished, tmp_path, monkeypatch, capsys):
    """A run started with seed=3 and resumed without it (seed 0) trained on to other numbers
    than the uninterrupted run (validation's stream is seeded afresh from seed: train/elbo
    -547.67 against -547.44 nats on a tiny run), and its results.json said seed 0, with no
    word. The seed is now checked with the model and data: one line naming it."""
    run_dir = copy_run(finished, tmp_path / "run")
    before = snapshot(run_dir)
    result = run(cli.train, [*TINY, "seed=1", "trainer.max_epochs=3", f"hydra.run.dir={run_dir}",
                             "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result.err[-2000:]
    assert "different model, data or seed: seed=0 (this run: 1)" in result.err
    assert snapshot(run_dir) == before


def test_a_resume_from_the_best_checkpoint_keeps_the_last_one(finished, tmp_path,
                                                               monkeypatch, capsys):
    """A resume from best-epochN.ckpt (as a non-finite stop advises) goes on in the run's
    directory and wrote last.ckpt anew: the state the run had reached was replaced without a
    word. It is now kept, byte for byte, as last-step<N>.ckpt (N: its step), and said; a resume
    from last.ckpt itself keeps nothing."""
    run_dir = copy_run(finished, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.ckpt"
    before, step = last.read_bytes(), read_checkpoint(last)["global_step"]
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))[0]
    result = run(cli.train, [*TINY, "trainer.max_epochs=3", f"ckpt_path={best}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-3000:]
    kept = run_dir / "checkpoints" / f"last-step{step}.ckpt"
    assert kept.read_bytes() == before and last.read_bytes() != before
    assert f"is kept as last-step{step}.ckpt" in result.out + result.err
    result = run(cli.train, [*TINY, "trainer.max_epochs=4", f"hydra.run.dir={run_dir}",
                             "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("last*.ckpt")) == [
        f"last-step{step}.ckpt", "last.ckpt"]


def test_resuming_a_complete_run_changes_nothing(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    before = snapshot(run_dir)
    result = run(cli.train, [*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
                             "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 0 and result.err.startswith("note: ") and "complete" in result.err
    assert snapshot(run_dir) == before


def test_a_fresh_run_into_a_run_directory_is_refused(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    before = snapshot(run_dir)
    result = run(cli.train, [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2 and "already holds a run" in result.err
    assert snapshot(run_dir) == before


def test_a_checkpoint_naming_other_code_cannot_be_resumed(finished, tmp_path, monkeypatch,
                                                          capsys):
    path, _ = _bad_checkpoint("code in the config", finished, tmp_path)
    result = run(cli.train, [*TINY, "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'fresh'}",
                             f"ckpt_path={path}"], monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2 and "builtins.open" in result.err
    assert not (tmp_path / "config-ran").exists()


def test_a_new_learning_rate_applies_on_resume_and_metrics_append(finished, tmp_path,
                                                                  monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    rows_before = (run_dir / "csv").exists()
    result = run(cli.train, [*TINY[:-4], "logger=csv", *QUIET, "trainer.max_epochs=3",
                             "model.optimizer.lr=0.0004", f"hydra.run.dir={run_dir}",
                             "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-3000:]
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(4e-4)
    assert state[CONFIG_KEY]["model"]["optimizer"]["lr"] == pytest.approx(4e-4)
    assert not rows_before  # the finished run logged nothing to CSV: logger=none
    assert len(list((run_dir / ".hydra" / "resumes").glob("*.yaml"))) == 1


def test_two_runs_in_one_directory_do_not_mix(tmp_path, monkeypatch, capsys):
    """The first run is another process (it holds the directory's lock from before Hydra writes
    .hydra/config.yaml); the second is started in this process while it trains."""
    run_dir = tmp_path / "run"
    args = [sys.executable, str(REPO / "train.py"), *TINY, "trainer.max_epochs=3",
            f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not (run_dir / ".hydra" / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.2)
    second = run(cli.train, [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
                 monkeypatch, capsys, tmp_path)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert second.code == 2 and "error: " in second.err, second
    assert "in use by another run" in second.err or "already holds a run" in second.err
    no_traceback(second)
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3
    assert "trainer.max_epochs=3" in (run_dir / ".hydra" / "overrides.yaml").read_text()


# ----------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum, code", [
    (signal.SIGTERM, 143),
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),  # the same path, another signal
])
def test_a_signal_stops_after_a_step_saves_and_says_how_to_resume(signum, code, tmp_path,
                                                                  monkeypatch, capsys):
    """The signalled run is another process; the resume runs in this process."""
    run_dir = tmp_path / "run"
    args = [sys.executable, str(REPO / "train.py"), *TINY, "trainer.max_epochs=200",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Resume with: vae-train" in err
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert f"step {state['global_step']}" in err  # the state saved is the one it says
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["exit_code"]) == ("interrupted", code)
    assert "test/elbo" not in results
    assert "results.json records the status 'interrupted'" in err  # what the line says is so
    resumed = run(cli.train, [*TINY, "trainer.max_epochs=5", f"hydra.run.dir={run_dir}",
                              "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    assert resumed.code == 0, resumed.err[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] in ("completed",)


def test_a_run_stopped_before_its_first_checkpoint_runs_again_in_its_directory(
        tmp_path, monkeypatch, capsys):
    """Nothing to resume: the line says to run the command again (it named a ckpt_path that was
    never written), and the same command again is not refused as a fresh run into a directory
    that holds a run (it was, for good: vae-bench's rows too)."""
    run_dir = tmp_path / "run"
    command = [*(o for o in TINY if o != "logger=none"), "logger=csv", "trainer.max_epochs=2",
               "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}"]
    term = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=fit",
            "+callbacks.term.hook=on_train_batch_start"]
    stopped = run(cli.train, [*command, *term], monkeypatch, capsys, tmp_path)
    metrics = run_dir / "csv" / "metrics.csv"
    assert metrics.is_file()  # the stopped run's first step
    assert stopped.code == 143, stopped
    lines = [line for line in stopped.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(
        "error: Stopped by SIGTERM before the first checkpoint, so there is nothing to resume; "
        "results.json records the status 'interrupted' (no test results). Run it again: "
        "vae-train "), stopped.err
    assert "ckpt_path" not in lines[0] and f"hydra.run.dir={run_dir}" in lines[0]
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["exit_code"]) == ("interrupted", 143)
    assert not (run_dir / "checkpoints").exists()
    again = run(cli.train, command, monkeypatch, capsys, tmp_path)
    assert again.code == 0, again.err[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["epochs"]) == ("completed", 2)
    steps = [row["step"] for row in csv.DictReader(metrics.open()) if row.get("train/loss")]
    assert steps == sorted(set(steps), key=int)  # this run's rows alone, each step once


def test_after_a_failed_command_a_fresh_run_in_this_process_is_still_refused(
        tmp_path, monkeypatch, capsys):
    """A command run from Python that fails (here: stopped after its checkpoints were written)
    ends its claim on the run directory as one that succeeds does: before, its lock stayed
    open, so that until this Python process ended, a resume from another process (a terminal
    beside the notebook) was refused as "in use by another run"."""
    run_dir = tmp_path / "run"
    command = [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    term = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=fit",
            "+callbacks.term.hook=on_train_end"]
    assert run(cli.train, [*command, *term], monkeypatch, capsys, tmp_path).code == 143
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    again = run(cli.train, command, monkeypatch, capsys, tmp_path)
    assert again.code == 2 and "already holds a run" in again.err, again
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before
    assert str(run_dir.resolve()) not in open_paths()


def test_a_run_stopped_in_its_final_evaluation_is_evaluated_by_its_resume(
        tmp_path, monkeypatch, capsys):
    """Trained to its length, stopped in the test after it: results.json says interrupted, and
    the resume the line gives trains nothing and evaluates the run (before: "the run is
    complete; nothing was trained or written", so its results could never be had). A resume
    after that one leaves the run as it is."""
    run_dir = tmp_path / "run"
    command = [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    term = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=test",
            "+callbacks.term.hook=on_test_end"]
    assert run(cli.train, [*command, *term], monkeypatch, capsys, tmp_path).code == 143
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    trained = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    resumed = run(cli.train, [*command, "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    assert resumed.code == 0, resumed.err[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and math.isfinite(results["test/elbo"])
    assert (results["epochs"], results["steps"]) == (1, trained)  # nothing more was trained
    again = run(cli.train, [*command, "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    assert again.code == 0 and "is complete" in again.err
    assert json.loads((run_dir / "results.json").read_text()) == results


# ------------------------------------------------------------------------------------- files
def test_a_failed_checkpoint_write_leaves_the_previous_file_and_no_partial_one(tmp_path,
                                                                               monkeypatch):
    from vae_lightning.checkpoints import AtomicCheckpointIO
    from vae_lightning.errors import UnwritableError

    io_ = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UnwritableError, match="No space left on device"):
        io_.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_checkpoints_are_renamed_into_place_from_their_own_directory(tmp_path, monkeypatch):
    from vae_lightning.checkpoints import AtomicCheckpointIO

    renames = []
    real = os.replace

    def spy(src, dst):
        renames.append((Path(src).parent, Path(dst)))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "a" / "best.ckpt"
    AtomicCheckpointIO().save_checkpoint({"x": torch.ones(3)}, path)
    assert renames == [(path.parent, path)]
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))


def test_a_checkpoint_gets_the_umask_s_permissions_not_owner_only(tmp_path):
    """Lightning's own checkpoint IO gives what ``open`` gives; so does ours, so that a run on a
    shared machine stays readable to the group where the umask lets it."""
    import stat

    from vae_lightning.checkpoints import AtomicCheckpointIO

    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"x": torch.ones(1)}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "last.ckpt").stat().st_mode) == 0o644


def test_an_unwritable_run_directory_is_exit_code_74(tmp_path, monkeypatch, capsys):
    from vae_lightning.checkpoints import AtomicCheckpointIO

    def refuse(self, checkpoint, path, storage_options=None):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", refuse)
    result = run(cli.train, [*TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    no_traceback(result)
    assert result.code == 74 and "No space left on device" in result.err


def test_the_exit_code_table_is_in_the_reliability_page():
    from vae_lightning.errors import EXIT_CODES

    page = (REPO / "docs" / "reliability.md").read_text()
    table = page.split("## Exit codes")[1].split("\n## ")[0]
    for code in EXIT_CODES:
        assert f"| {code} |" in table


def _unused(*_: object) -> io.StringIO:  # keep io imported for readers of run()
    return io.StringIO()
