"""A newcomer's first hour: the commands as a new user runs them, read against
lightning-hydra-template's conventions (tags, extras, one file per callback, debug presets, the
search's optimized_metric): a group named without its parent, each command's --help,
ckpt_path=last, a refused run, the debug presets, the console, small data, early stopping."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
from compose import REPO
from hydra import compose, initialize_config_dir
from test_hostile import Result, run

from vae_lightning import cli, rundir
from vae_lightning.errors import CheckpointError

BIN = Path(sysconfig.get_path("scripts"))
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures.n_points=0"]
TINY = ["model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
        "trainer.max_epochs=1", "logger=none", *QUIET]


def _train(args: list[str], monkeypatch, capsys, cwd: Path) -> Result:
    """``vae-train <args>`` from ``cwd``, as a user types it, in this process (the process
    boundary is not what these tests check; tests/test_install.py runs the console scripts)."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    return run(cli.train, args, monkeypatch, capsys, cwd)


def _popen_train(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python train.py <args>`` from ``cwd`` in a process of its own, started (``.communicate``
    waits for it)."""
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _script(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _one_error_line(result: Result) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert "Traceback" not in result.err + result.out, result.err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err[-3000:]
    return lines[0]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------- a group and its parent
@pytest.mark.parametrize("override, use", [
    ("prior=vamp", "model/prior=vamp"),
    ("likelihood=gaussian", "model/likelihood=gaussian"),
    ("posterior=nosuch", "model/posterior=<option>"),
])
def test_a_group_named_without_its_parent_names_the_override(override, use, tmp_path,
                                                           monkeypatch, capsys):
    proc = _train([override], monkeypatch, capsys, tmp_path)
    assert proc.code == 2
    line = _one_error_line(proc)
    assert use in line and override in line, line
    assert "+" + override not in line  # not Hydra's advice, which adds a key nothing reads
    assert not (tmp_path / "outputs").exists()


def test_the_appended_key_hydra_suggests_is_refused_too(tmp_path, monkeypatch, capsys):
    proc = _train(["+prior=vamp", *TINY], monkeypatch, capsys, tmp_path)
    assert proc.code == 2, proc.err[-3000:]
    assert "model/prior=vamp" in proc.err and "Traceback" not in proc.err + proc.out
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------------------------- --help
def _composed(name: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name)


# The commands' --help in this process: tests/test_install.py runs each installed console
# script's --help.
@pytest.mark.parametrize("script, config, node", [("vae-eval", "eval", "eval"),
                                                  ("vae-sample", "sample", None)])
def test_eval_and_sample_help_show_their_own_keys(script, config, node, tmp_path, monkeypatch,
                                                  capsys):
    app = {"vae-eval": cli.evaluate, "vae-sample": cli.sample}[script]
    proc = run(app, ["--help", f"hydra/help={config}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-2000:]
    keys = _composed(config)
    for key in (keys[node] if node else keys):  # every key of the composed config, whatever
        assert re.search(rf"^\s*'?{key}'?:", proc.out, re.M), (key, proc.out)
    for group in ("model/prior", "data", "trainer", "logger", "callbacks"):  # no group listed
        assert not re.search(rf"^{group}:", proc.out, re.M), group
    assert f"{script} ckpt_path=" in proc.out  # an example of the command


def test_train_help_lists_the_groups_and_the_run_settings(tmp_path, monkeypatch, capsys):
    proc = _train(["--help"], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-2000:]
    assert re.search(r"^model/prior: .*\bmog, normal\b.*\bvamp\b", proc.out, re.M)
    assert re.search(r"^trainer: .*\bmps\b", proc.out, re.M)
    assert re.search(r"^callbacks: .*\bearly_stopping\b", proc.out, re.M)
    assert "tags: []" in proc.out and "print_config: false" in proc.out


def test_train_help_lists_the_options_of_a_searchpath_s_folders(tmp_path, monkeypatch, capsys):
    """Options of one's own, in a folder given by hydra.searchpath, are listed with the
    package's (they were left out: the list read the package's conf/ only)."""
    mine = tmp_path / "my_conf"
    (mine / "model" / "objective").mkdir(parents=True)
    (mine / "model" / "objective" / "half_kl.yaml").write_text(
        "_target_: vae_lightning.objectives.elbo.ELBO\n")
    (mine / "mygroup").mkdir()
    (mine / "mygroup" / "a.yaml").write_text("x: 1\n")
    proc = _train(["--help", f"hydra.searchpath=[file://{mine}]"], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-2000:]
    assert re.search(r"^model/objective: .*\belbo\b.*\bhalf_kl\b.*\biwae\b", proc.out, re.M)
    assert re.search(r"^mygroup: a$", proc.out, re.M)


def test_summarize_help_says_what_it_does_in_whole_sentences(tmp_path):
    proc = _script("vae-summarize", ["--help"], tmp_path)
    assert proc.returncode == 0
    description = proc.stdout.split("positional arguments")[0]
    assert "tabulates the results of its jobs." in " ".join(description.split())
    assert description.strip().endswith(".")


# ------------------------------------------------------------------------- ckpt_path=last
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run's directory (vae-train, in this process)."""
    directory = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYDRA_FULL_ERROR", "1")
        patch.chdir(directory.parent)
        patch.setattr(sys, "argv", ["vae-train", *TINY, f"hydra.run.dir={directory}"])
        cli.train()
    assert json.loads((directory / "results.json").read_text())["status"] == "completed"
    return directory


def test_ckpt_path_last_resumes_the_newest_run_and_says_which(finished, tmp_path, monkeypatch,
                                                              capsys):
    older = shutil.copytree(finished, tmp_path / "outputs" / "2026-01-02" / "10-00-00")
    newer = shutil.copytree(finished, tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    os.utime(older / "checkpoints" / "last.ckpt", (1e9, 1e9))  # written long ago
    before = _files(older)
    proc = _train([*TINY, "trainer.max_epochs=2", "ckpt_path=last"], monkeypatch, capsys,
                  tmp_path)
    assert proc.code == 0, proc.err[-3000:]
    said = [line for line in proc.out.splitlines()
            if "ckpt_path=last: resuming the run in" in line]
    assert len(said) == 1 and "the newest run under" in said[0]
    assert str(newer.relative_to(tmp_path)) in said[0]
    assert json.loads((newer / "results.json").read_text())["epochs"] == 2
    assert _files(older) == before


def test_ckpt_path_last_without_a_run_leaves_nothing(tmp_path, monkeypatch, capsys):
    proc = _train([*TINY, "ckpt_path=last"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2
    assert "ckpt_path=last" in _one_error_line(proc)
    assert not (tmp_path / "outputs").exists()


def test_the_meaning_of_ckpt_path_last(tmp_path):
    """The run directory's own last.ckpt; its run directory: hydra.run.dir, or by default the
    run under the root whose last.ckpt was written last."""
    root = tmp_path / "outputs"
    fresh = root / "2026-01-03" / "00-00-00"
    assert rundir.last_run(fresh) == fresh  # no run yet: the fresh directory
    with pytest.raises(CheckpointError, match="no run under .*outputs/"):
        rundir.resume_checkpoint("last", fresh)
    for day, when in (("2026-01-01", 2e9), ("2026-01-02", 1e9)):
        last = root / day / "00-00-00" / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"x")
        os.utime(last, (when, when))
    picked = rundir.last_run(fresh)
    assert picked == root / "2026-01-01" / "00-00-00"
    assert rundir.resume_checkpoint("last", picked) == str(rundir.last_checkpoint(picked))
    assert "the newest run under" in rundir.resumed_run(picked)
    assert "the newest run" not in rundir.resumed_run(root / "2026-01-02" / "00-00-00")
    assert rundir.resume_checkpoint("x.ckpt", picked) == "x.ckpt"
    assert rundir.resume_checkpoint(None, picked) is None


# --------------------------------------------------------------------------- a refused run
def test_a_refused_run_leaves_no_directory_it_created(tmp_path, monkeypatch, capsys):
    proc = _train(["model.latent=0"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2 and "model.latent=0" in proc.err
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "outputs" / "2020-01-01" / "run").mkdir(parents=True)  # folders that existed
    proc = _train(["model.latent=0"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["2020-01-01"]
    assert (tmp_path / "outputs" / "2020-01-01" / "run").is_dir()


@pytest.mark.parametrize("args, said", [
    (["model.latent=3", "model.latent=0"],
     "model.latent is given 2 times on the command line (3, then 0): the last, model.latent=0, "
     "is used."),
    (["-m", "data=frey", "trainer.max_steps=1", "data=mnist,frey", "model.latent=0"],
     "data is given 2 times on the command line (frey, then mnist,frey): the last, "
     "data=mnist,frey, is used."),
])
def test_a_key_given_twice_on_the_command_line_is_warned_of(args, said, tmp_path, monkeypatch,
                                                            capsys):
    """``data=frey ... data=mnist`` (a script's base command and its own value) trained on
    MNIST without a word: Hydra takes the last. Now a warning names the key, its values and
    the one used; the run goes on with it (here refused for it, model.latent=0). The same value
    twice is no warning."""
    proc = _train([*args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], monkeypatch, capsys,
                  tmp_path)
    assert proc.code == 2 and "model.latent=0 is not allowed" in proc.err
    assert (proc.out + proc.err).count(said) == 1, (proc.out + proc.err)[-2000:]
    proc = _train(["model.latent=0", "model.latent=0"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2 and "given 2 times" not in proc.out + proc.err


def test_a_refused_run_keeps_a_directory_that_existed(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    proc = _train(["model.latent=0", f"hydra.run.dir={mine}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2
    assert (mine / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------- debug
def test_fast_dev_run_keeps_nothing_among_the_real_runs(tmp_path, monkeypatch, capsys):
    proc = _train(["debug=fast_dev_run", *TINY[:-1]], monkeypatch, capsys,
                  tmp_path)  # it draws no figures
    assert proc.code == 0, proc.err[-3000:]
    outputs = tmp_path / "outputs"
    assert [p.name for p in outputs.iterdir()] == ["debug"]
    kept = [p.relative_to(outputs) for p in outputs.rglob("*") if p.is_file()]
    assert kept and all(p.name.endswith((".log", ".yaml")) for p in kept), kept
    assert not any(part in {"checkpoints", "figures", "results.json", "curve.json"}
                   for p in kept for part in p.parts)


# --------------------------------------------------------------------------------- console
NOISE_WORDS = ("LeafSpec", "Tip:", "across ranks is zero", "could not find the monitored key")


def test_a_first_run_shows_our_lines_not_third_party_noise(tmp_path):
    """With an empty validation split (data.val_size=0) Lightning warns about the empty loader
    and the checkpoint's missing metric, and advertises; extras.ignore_warnings hides that.
    Real processes (a first run's terminal: warnings not yet shown once, no pytest capture),
    the two side by side."""
    args = [*TINY, "data.val_size=0"]
    started = [_popen_train([*args, "extras.ignore_warnings=false",
                             f"hydra.run.dir={tmp_path / 'a'}"], tmp_path),
               _popen_train([*args, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)]
    try:
        (noisy_out, noisy_err), (quiet_out, quiet_err) = (
            proc.communicate(timeout=300) for proc in started)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in started] == [0, 0], (noisy_err + quiet_err)[-3000:]
    shown = [word for word in NOISE_WORDS if word in noisy_out + noisy_err]
    assert len(shown) >= 2, noisy_err[-3000:]  # Lightning's own warnings, version-independent
    assert not [word for word in NOISE_WORDS if word in quiet_out + quiet_err]
    assert "results written to" in quiet_out + quiet_err


def test_small_data_logs_a_training_step_every_epoch(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as warned:  # what a terminal would show
        warnings.simplefilter("always")
        proc = _train([*TINY, "logger=csv", "data.batch_size=800", f"hydra.run.dir={run}"],
                      monkeypatch, capsys, tmp_path)  # 1565 Frey Face images: 2 batches, < 10
    assert proc.code == 0, proc.err[-3000:]
    assert "logging interval" not in proc.err
    assert not [w for w in warned if "logging interval" in str(w.message)]
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [r.split(",")[header.index("train/loss")] for r in rows[1:]]
    assert any(value for value in logged)


# ---------------------------------------------------------------------- tags and extras
def test_print_config_prints_and_saves_the_resolved_config(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    proc = _train([*TINY, "extras.print_config=true", "tags=[first,frey]",
                   f"hydra.run.dir={run}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-3000:]
    saved = (run / "config_tree.log").read_text()
    assert "tags:\n- first\n- frey\n" in saved and f"output_dir: {run}" in saved
    assert saved in proc.out


# ------------------------------------------------------------------------------ callbacks
def test_early_stopping_stops_a_tiny_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    monkeypatch.setattr(sys, "argv", [
        "vae-train", *TINY, "trainer.max_epochs=4", "callbacks=[default,early_stopping]",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1e9",  # no epoch improves by a billion nats
        f"hydra.run.dir={run}"])
    monkeypatch.chdir(tmp_path)
    cli.train()
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 2  # then it stopped


def test_early_stopping_lets_a_run_that_stops_within_an_epoch_finish(tmp_path, monkeypatch):
    """trainer.max_steps ends the run inside its first epoch, before any validation: early
    stopping, checked after validations only, has nothing to check, and the run completes
    with its results (a check at the epoch's end found no val/elbo and failed the run)."""
    run = tmp_path / "run"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", [
        "vae-train", *TINY, "trainer.max_steps=3", "callbacks=[default,early_stopping]",
        f"hydra.run.dir={run}"])
    monkeypatch.chdir(tmp_path)
    cli.train()
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 3
