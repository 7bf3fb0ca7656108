"""Hostile round thirteen (/work/notes/hostile13.md): each test fails on the code before its fix."""

from __future__ import annotations

import copy
import json
import shlex

import numpy as np
import pytest
import torch
from test_hostile import TINY, no_traceback, run, snapshot

from vae_lightning import cli
from vae_lightning.checkpoints import read_checkpoint, run_config
from vae_lightning.errors import CheckpointError
from vae_lightning.resume import check_epoch_continues


def _stopped_mid_epoch(tmp_path, monkeypatch, capsys):
    """A Frey Face run stopped by trainer.max_steps=2 within its first epoch (16 batches of
    100), as a short try is."""
    directory = tmp_path / "run"
    result = run(cli.train, [*TINY, "data=frey", "trainer.max_steps=2",
                             f"hydra.run.dir={directory}"], monkeypatch, capsys, tmp_path)
    assert result.code == 0, result.err[-3000:]
    return directory


def test_a_resume_mid_epoch_with_another_batch_size_is_refused(tmp_path, monkeypatch, capsys):
    """Continued with data.batch_size=50 after 2 batches of 100, the training sampler skipped the
    epoch's first 2 batches of 50 (counted in batches), so points 100..199 of the epoch's order
    were trained twice (with 250: points 200..499 never), silently."""
    directory = _stopped_mid_epoch(tmp_path, monkeypatch, capsys)
    last = directory / "checkpoints" / "last.ckpt"
    before = snapshot(directory)
    result = run(cli.train, [*TINY, "data=frey", "trainer.max_steps=6", "data.batch_size=50",
                             f"ckpt_path={last}", f"hydra.run.dir={directory}"], monkeypatch,
                 capsys, tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert "2 batches of data.batch_size=100 trained" in result.err, result.err
    assert "data.batch_size=50" in result.err and "trainer.max_epochs=1" in result.err
    assert snapshot(directory) == before  # nothing written: no record of the resume either
    # The same checkpoint taken at its epoch's end goes on with any batch size; the same batch
    # size goes on mid-epoch.
    checkpoint = read_checkpoint(last)
    config = copy.deepcopy(run_config(checkpoint, last))
    check_epoch_continues(config, checkpoint, last)  # the same size: goes on
    config["data"]["batch_size"] = 50
    with pytest.raises(CheckpointError, match="part-way through an epoch"):
        check_epoch_continues(config, checkpoint, last)
    checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] = True
    check_epoch_continues(config, checkpoint, last)


def test_uint64_labels_beyond_int64_are_refused_naming_the_value(tmp_path, monkeypatch,
                                                                 capsys):
    """uint64 labels are read as int64: 2**63 + 5 wrapped to -9223372036854775803, and the
    refusal of model=cvae said the data 'have labels -9223372036854775803..9', a value the file
    does not hold (2**64 - 1 became -1, no label, silently, for a model that takes none)."""
    x = (np.arange(200 * 64) % 256).astype(np.uint8).reshape(200, 8, 8)
    for big in (2 ** 63 + 5, 2 ** 64 - 1):
        y = (np.arange(200) % 10).astype(np.uint64)
        y[-1] = big
        path = tmp_path / f"labels{big}.npz"
        np.savez(path, x=x, y=y)
        for model in ("model=cvae", "model=vae"):
            directory = tmp_path / f"run-{big}-{model[6:]}"
            result = run(cli.train, [*TINY, "data=array", f"data.path={path}",
                                     "data.labels_key=y", model, "trainer.max_steps=1",
                                     f"hydra.run.dir={directory}"], monkeypatch, capsys,
                         tmp_path)
            no_traceback(result)
            assert result.code == 2, result
            assert f"holds the label {big}, beyond the int64 range" in result.err, result.err
            assert "labels_key='y'" in result.err and "-9223372036854775803" not in result.err
            assert not (directory / "checkpoints").exists()


def test_the_printed_resume_command_works_in_a_directory_with_a_space_or_accents(
        tmp_path, monkeypatch, capsys):
    """A run in 'my runs (ü)/run' stopped by SIGTERM printed 'Resume with: vae-train ...
    ckpt_path=/.../my runs (ü)/run/checkpoints/last.ckpt': the shell split the path at the
    space (Hydra: "mismatched input 'last.ckpt' expecting ID"), and Hydra's grammar takes no
    parenthesis or letter beyond ASCII unquoted. The command now pastes as it reads."""
    directory = tmp_path / "my runs (ü)" / "run"
    term = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=fit",
            "+callbacks.term.hook=on_train_end"]
    given = [*TINY, "data=frey", "data.batch_size=1000", "trainer.max_epochs=1"]
    stopped = run(cli.train, [*given, *term, f'hydra.run.dir="{directory}"'], monkeypatch,
                  capsys, tmp_path)
    no_traceback(stopped)
    assert stopped.code == 143, stopped.err[-3000:]
    line = next(line for line in stopped.err.splitlines() if line.startswith("error: "))
    words = shlex.split(line.split("Resume with: ")[1].removesuffix("."))
    last = directory / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert words[0] == "vae-train" and words[1:-1] == [*given, *term], words
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(words[-1]).value() == str(last), words[-1]
    resumed = run(cli.train, [w for w in words[1:] if not w.startswith("+callbacks.term")],
                  monkeypatch, capsys, tmp_path)
    assert resumed.code == 0, resumed.err[-3000:]
    assert json.loads((directory / "results.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("extra", [
    {"disentanglement": {"scores": {"mig": {"mean": 0.31, "std": None, "values": [0.31]}},
                         "seeds": [0], "options": {"mig": {"num_train": 10000, "bins": 20}},
                         "seconds": 5400.0}},
    {"sample_quality": {"features": "classifier", "classifier": "/data/c.pt", "fid": 12.5,
                        "real": 10000, "generated": 10000, "samples_are": "E[x|z]",
                        "seed": 0, "seconds": 3600.0}},
    {"fitted_prior": {"sampler": "pixelcnn", "elbo": {"nats": -80.1, "nats_se": 0.3}}},
])
def test_an_evaluation_without_the_metrics_does_not_replace_one_with_them(extra, tmp_path):
    """vae-eval eval.metrics=[mig] (or eval.sample_quality=[fid], eval.fitted_prior=pixelcnn),
    hours of work, then vae-eval again with the same split, k and points but without them: the
    second counted as the same evaluation and replaced eval.json, the metrics lost (an
    evaluation with AIS and one without were already kept apart)."""
    from vae_lightning.evaluate import _keep_what_is_replaced

    bounds = {"split": "test", "k": 100, "n": 500, "checkpoint": "/r/checkpoints/last.ckpt",
              "train_samples_seen": 1000, "data_source": {"data.root": "/data"},
              "elbo": {"nats": -90.0}, "iw": {"nats": -88.0}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({**bounds, **extra}))
    _keep_what_is_replaced(path, dict(bounds))
    kept = tmp_path / "eval-test-k100-n500.json"
    assert not path.exists() and json.loads(kept.read_text()) == {**bounds, **extra}
    # The same evaluation run again (the same metrics and settings) replaces it, as before.
    path.write_text(json.dumps({**bounds, **extra}))
    _keep_what_is_replaced(path, {**bounds, **extra, "seconds": 1.0})
    assert path.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "eval-test-k100-n500.json", "eval.json"]


def test_vae_summarize_reads_runs_linked_into_the_folder(tmp_path, capsys):
    """A folder of symbolic links to runs kept elsewhere ('vae-summarize runs', runs/<name>
    linked): Path.glob('**') follows no link, so it was 'error: no results.json under ...'
    (exit 2), and a sweep with one job linked in lost that job from its table, no word. A link
    back up the tree is read once, not followed round."""
    from vae_lightning.reports.summarize import main

    elsewhere = tmp_path / "elsewhere"
    for name, latent in (("a", 2), ("b", 5)):
        (elsewhere / name).mkdir(parents=True)
        (elsewhere / name / "results.json").write_text(json.dumps(
            {"data": "frey", "latent": latent, "test/elbo": 500.0 + latent}))
    runs = tmp_path / "runs"
    (runs / "c").mkdir(parents=True)
    (runs / "c" / "results.json").write_text(json.dumps(
        {"data": "frey", "latent": 10, "test/elbo": 520.0}))
    (runs / "a").symlink_to(elsewhere / "a")
    (runs / "b").symlink_to(elsewhere / "b", target_is_directory=True)
    (runs / "c" / "up").symlink_to(runs)  # a loop
    assert main([str(runs)]) == 0, capsys.readouterr().err
    table = [line for line in (runs / "summary.md").read_text().splitlines()
             if line.startswith("| ") and not line.startswith(("| job", "| ---"))]
    assert [line.split(" | ")[0] for line in table] == ["| a", "| b", "| c"], table


def test_vae_eval_refuses_a_checkpoint_replaced_while_it_was_read(tmp_path, monkeypatch,
                                                                    capsys):
    """vae-eval of a last.ckpt that a run still training writes again: the model was loaded
    from one file and the SHA-256 that names a stopped evaluation's batches (eval.progress.pt)
    read from the next, so a second run of the evaluation went on from the old model's batches
    with the new model, silently. The file's digest is now taken before the load and checked
    after it."""
    from vae_lightning import evaluate

    directory = _stopped_mid_epoch(tmp_path, monkeypatch, capsys)
    last = directory / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)  # the state after one more step, say
    name = next(iter(state["state_dict"]))
    state["state_dict"][name] = state["state_dict"][name] + 1e-3
    torch.save(state, tmp_path / "next.ckpt")
    loaded = evaluate.load_model

    def load_then_written_again(path, *args, **kwargs):
        found = loaded(path, *args, **kwargs)
        (tmp_path / "next.ckpt").replace(path)  # the run's atomic write of last.ckpt
        return found

    monkeypatch.setattr(evaluate, "load_model", load_then_written_again)
    out = tmp_path / "eval"
    result = run(cli.evaluate, [f"ckpt_path={last}", "eval.k=2", "eval.limit=20",
                                "eval.device=cpu", f"output_dir={out}",
                                f"hydra.run.dir={tmp_path / 'log'}"], monkeypatch, capsys,
                 tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    assert f"Checkpoint {last} changed while it was read" in result.err, result.err
    assert not (out / "eval.json").exists() and not (out / "eval.progress.pt").exists()


def test_vae_summarize_refuses_a_fifo_named_results_json_instead_of_blocking(tmp_path):
    """A job folder whose results.json is a FIFO (or eval.json): vae-summarize read it with
    Path.read_text and waited for a writer forever. Only regular files are opened now."""
    import os
    import subprocess
    import sys

    for name in ("results.json", "eval.json"):
        sweep = tmp_path / name
        for job in ("0", "1"):
            (sweep / job).mkdir(parents=True)
            (sweep / job / "results.json").write_text(json.dumps(
                {"data": "frey", "latent": 2 + int(job), "test/elbo": 500.0}))
        fifo = sweep / "1" / name
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from vae_lightning.reports.summarize import "
             f"main; sys.exit(main([{str(sweep)!r}]))"],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-3000:]
        what, who = (("results.json", "the job") if name == "results.json"
                     else ("eval.json (vae-eval's)", "it"))
        assert done.stderr.strip() == (
            f"error: {fifo} is a FIFO (named pipe); expected the job's {what} (a regular "
            f"file); mend it or move {who} away, and summarize again."), done.stderr
        assert not (sweep / "summary.md").exists()
