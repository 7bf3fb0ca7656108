"""Hostile input to the command layer: a run directory on a read-only mount, equal to a file or
under one; a resume into another run's directory; a corrupt Optuna study; SIGTERM while a
job starts; config groups set to a number or null; an accelerator the machine lacks.

Each case runs the command as a user would (in this process through the same entry point, or in
a subprocess where a signal is involved) and asserts: no traceback, the documented exit code
(docs/reliability.md, "Exit codes"), one ``error:`` line naming the key or file, and nothing
written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from compose import REPO, copy_run
from test_hostile import FINISHED, finished_here

from vae_lightning import cli, rundir
from vae_lightning.errors import ConfigError

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures.n_points=0"]
TINY = ["model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
        "trainer.max_epochs=1", "logger=none", *QUIET]


class Result(NamedTuple):
    code: int
    out: str
    err: str


def run(app, args: list[str], monkeypatch, capsys, cwd: Path) -> Result:
    """The command ``app`` (cli.train, cli.evaluate) with ``args``, in this process."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["vae", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    capsys.readouterr()
    code = 0
    try:
        app()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)


def one_error_line(result) -> str:
    err = result.err if isinstance(result, Result) else result.stderr
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only(tmp_path):
    """A real read-only filesystem: a tmpfs mounted ro."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", str(where)], check=True)


# --------------------------------------------------------------------------- run directory
def test_a_run_directory_on_a_read_only_mount_is_exit_code_74(read_only, tmp_path,
                                                                monkeypatch, capsys):
    result = run(cli.train, [*TINY, f"hydra.run.dir={read_only / 'run'}"], monkeypatch, capsys,
                 tmp_path)
    assert result.code == 74
    line = one_error_line(result)
    assert f"hydra.run.dir={read_only / 'run'}" in line and "read-only" in line
    assert list(read_only.iterdir()) == []


def test_a_sweep_directory_on_a_read_only_mount_is_exit_code_74(read_only, tmp_path,
                                                                  monkeypatch, capsys):
    result = run(cli.train, ["-m", *TINY, "model.latent=2,3",
                             f"hydra.sweep.dir={read_only / 'sweep'}"], monkeypatch, capsys,
                 tmp_path)
    assert result.code == 74
    assert "hydra.sweep.dir=" in one_error_line(result)


@pytest.mark.parametrize("where", ["the file", "under the file"])
def test_a_run_directory_that_is_a_file_or_under_one_is_exit_code_2(where, tmp_path,
                                                                      monkeypatch, capsys):
    file = tmp_path / "notes"
    file.write_text("my notes")
    directory = file if where == "the file" else file / "a" / "run"
    result = run(cli.train, [*TINY, f"hydra.run.dir={directory}"], monkeypatch, capsys,
                 tmp_path)
    assert result.code == 2
    line = one_error_line(result)
    assert f"hydra.run.dir={directory}" in line and "a file" in line
    assert file.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


# ----------------------------------------------------------------- a resume into another run
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run's directory (test_hostile's 2-epoch run, trained once per process for the
    test_hostile*.py modules: ``test_hostile.finished_here``)."""
    return finished_here(tmp_path_factory, FINISHED)




def test_a_resume_into_another_run_s_directory_is_refused(finished, tmp_path, monkeypatch,
                                                           capsys):
    a = copy_run(finished, tmp_path / "a")
    b = copy_run(finished, tmp_path / "b")
    before = {"a": snapshot(a), "b": snapshot(b)}
    result = run(cli.train, [*TINY, "trainer.max_epochs=2", f"hydra.run.dir={a}",
                             f"ckpt_path={b / 'checkpoints' / 'last.ckpt'}"], monkeypatch, capsys,
                 tmp_path)
    assert result.code == 2
    line = one_error_line(result)
    assert "holds another run" in line and str(b) in line
    assert {"a": snapshot(a), "b": snapshot(b)} == before


def test_guard_refuses_a_resume_into_another_run_and_allows_its_own(finished, tmp_path):
    a = copy_run(finished, tmp_path / "a")
    b = copy_run(finished, tmp_path / "b")
    with pytest.raises(ConfigError, match="holds another run"):
        rundir.guard(a, str(b / "checkpoints" / "last.ckpt"))
    with pytest.raises(ConfigError, match="already holds a run"):
        rundir.guard(b, None)
    rundir.guard(b, "last")  # its own: allowed
    rundir.guard(b, str(b / "checkpoints" / "last.ckpt"))
    rundir.guard(tmp_path / "fresh", str(b / "checkpoints" / "last.ckpt"))  # a fresh one


# ------------------------------------------------------------------------------- a study
def _corrupt_study(kind: str, folder: Path) -> Path:
    path = folder / "optuna.db"
    folder.mkdir(parents=True)
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
        return path
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="vae", storage=f"sqlite:///{path}")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated mid-table
    return path


@pytest.mark.parametrize("kind", ["random bytes", "truncated"])
def test_a_corrupt_optuna_study_is_one_line_naming_the_file(kind, tmp_path, monkeypatch,
                                                            capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    path = _corrupt_study(kind, tmp_path / "search")
    before = path.read_bytes()
    result = run(cli.train, ["hparams_search=optuna", *TINY,
                             f"hydra.sweep.dir={tmp_path / 'search'}"], monkeypatch, capsys,
                 tmp_path)
    assert result.code == 2
    line = one_error_line(result)
    assert str(path) in line and "hydra.sweep.dir" in line
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["optuna.db"]


# ----------------------------------------------------------------------------------- signals
def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """``train.py <args>`` in a process of its own, which finds the tests' callbacks."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# SIGTERM from the job itself at a chosen hook (fault_injection.SigtermAt), in a real process:
# a signal sent from here when a file appears lands wherever the job has got to by then.
AT_SETUP = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=fit",
            "+callbacks.term.hook=setup"]


def test_sigterm_while_a_sweep_s_job_starts_ends_with_its_status_and_the_count(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _start(["-m", *TINY, "model.latent=2,3", f"hydra.sweep.dir={sweep}", *AT_SETUP],
                  tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    line = one_error_line(subprocess.CompletedProcess([], 143, out, err))
    assert "Stopped by SIGTERM" in line
    assert out.strip().splitlines()[-1] == (f"sweep {sweep}: 1 jobs: 1 interrupted; failed: "
                                            "job 0 (interrupted)")
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert (results["status"], results["exit_code"]) == ("interrupted", 143)
    assert not (sweep / "1").exists()


@pytest.mark.parametrize("fn, hook", [("fit", "on_train_end"),
                                      ("validate", "on_validation_end"),
                                      ("test", "on_test_end")])
def test_sigterm_where_lightning_no_longer_looks_still_ends_the_sweep(fn, hook, tmp_path,
                                                                      monkeypatch, capsys):
    """Lightning's loops look for SIGTERM between steps and epochs and forget it when their
    Trainer call ends: one that arrives after the last epoch's check, or in an evaluation's last
    batch, must still end the job (exit code 143, status interrupted) and the sweep."""
    sweep = tmp_path / "sweep"
    result = run(cli.train, ["-m", *TINY, "model.latent=2,3", f"hydra.sweep.dir={sweep}",
                             "+callbacks.term._target_=fault_injection.SigtermAt",
                             f"+callbacks.term.fn={fn}", f"+callbacks.term.hook={hook}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 143, result
    assert "Stopped by SIGTERM" in one_error_line(result)
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert (results["status"], results["exit_code"]) == ("interrupted", 143)
    assert "test/elbo" not in results
    assert not (sweep / "1").exists()


def test_sigterm_before_a_run_trains_ends_with_the_line_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    proc = _start([*TINY, f"hydra.run.dir={run_dir}", *AT_SETUP], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    line = one_error_line(subprocess.CompletedProcess([], 143, out, err))
    assert line.startswith("error: Stopped by SIGTERM before the run trained; nothing was "
                           "trained. Run it again: vae-train "), line
    assert f"hydra.run.dir={run_dir}" in line  # in its own directory, as reliability.md says
    assert not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------- groups set to values
@pytest.mark.parametrize("overrides, words", [
    (["model.encoder=3"], ["model.encoder=3", "model/encoder=<option>", "mlp"]),
    (["model.prior=null"], ["model.prior=null", "model/prior=<option>", "vamp"]),
    (["model.prior=vamp"], ["model.prior='vamp'", "model/prior=<option>"]),
    (["model.optimizer=null"], ["model.optimizer=null", "model/optimizer=<option>", "adam"]),
    (["model.decoder.likelihood=null"], ["model.decoder.likelihood=null", "model/likelihood"]),
    (["model.encoder.net=3"], ["model.encoder.net=3", "_target_"]),
    (["callbacks.figures=4"], ["callbacks.figures=4", "_target_", "null to leave it out"]),
    (["callbacks=3"], ["callbacks=3", "config group", "default", "none"]),
    (["logger=null"], ["logger=null", "logger=none"]),
    (["data=7"], ["data=7", "frey", "mnist"]),
])
def test_a_group_set_to_a_value_names_the_key_and_what_is_accepted(overrides, words, tmp_path,
                                                                   monkeypatch, capsys):
    result = run(cli.train, [*TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 2, result
    assert result.err.startswith("error: ") and "Traceback" not in result.err, result.err
    for word in words:
        assert word in result.err, f"{word!r} not in {result.err}"
    assert "object has no attribute" not in result.err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_trainer_mps_without_mps_is_one_line(tmp_path, monkeypatch, capsys):
    result = run(cli.train, [*TINY, "trainer=mps", f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 2
    line = one_error_line(result)
    assert "trainer.accelerator='mps'" in line and "no mps device" in line and "cpu" in line
    assert not (tmp_path / "run").exists()


def test_hydra_run_dir_given_to_a_sweep_is_said_to_be_unused(tmp_path, monkeypatch, capsys):
    """A sweep's jobs go to hydra.sweep.dir; hydra.run.dir given with -m went unused without a
    word, the jobs' outputs named only by the sweep's last line."""
    sweep = tmp_path / "sweep"
    result = run(cli.train, ["-m", *TINY, "model.latent=0", f"hydra.sweep.dir={sweep}",
                             f"hydra.run.dir={tmp_path / 'mine'}"], monkeypatch, capsys,
                 tmp_path)
    said = result.out + result.err
    assert (f"hydra.run.dir={tmp_path / 'mine'} is not used by a sweep (-m): its jobs go to "
            f"hydra.sweep.dir={sweep} (one folder each); give hydra.sweep.dir=... to choose "
            "where.") in said, said[-2000:]
    assert not (tmp_path / "mine").exists()
