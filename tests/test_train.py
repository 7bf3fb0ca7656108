"""End-to-end: train.py trains on real Frey Face, sweeps with multirun, rejects bad input."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from compose import REPO, compose_train, open_paths
from test_hostile import run

from vae_lightning import cli, rundir
from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.errors import ConfigError
from vae_lightning.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _val_elbo_by_epoch(metrics_csv):
    with open(metrics_csv) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/elbo")]
    return [float(r["val/elbo"]) for r in rows]


def test_training_on_frey_face_raises_the_validation_bound(tmp_path):
    cfg = compose_train(
        ["data=frey", "model.latent=2", "trainer.max_epochs=4", "logger=csv",
         "callbacks.figures.n_points=0", *QUIET], tmp_path  # no latent scatter: not checked
    )
    results = train(cfg)
    curve = _val_elbo_by_epoch(tmp_path / "csv" / "metrics.csv")[:4]  # then the final validate
    assert len(curve) == 4
    assert curve[-1] > curve[0] + 20, curve  # nats per data point
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved.keys() == results.keys()
    # The README shows what the code writes: the same keys, in the same order.
    readme = (REPO / "README.md").read_text().split("<!-- results.json")[1]
    shown = json.loads(readme.split("```json\n")[1].split("```")[0])
    assert list(saved) == list(shown)
    assert Path(saved["checkpoint"]).is_absolute() and Path(shown["checkpoint"]).is_absolute()
    for key, value in results.items():  # the numbers to JSON's float rounding, the rest exactly
        assert saved[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    for key in ("test/elbo", "val/elbo", "test/recon", "test/kl", "train/elbo"):
        assert math.isfinite(saved[key])
    assert saved["test/elbo"] == pytest.approx(saved["test/recon"] - saved["test/kl"], abs=1e-2)
    # The best checkpoint, re-validated (the bound is a Monte-Carlo estimate: L = 1).
    assert saved["val/elbo"] == pytest.approx(max(curve), abs=2.0)
    assert (saved["data"], saved["latent"], saved["likelihood"], saved["prior"]) == (
        "frey", 2, "gaussian", "normal")
    assert saved["epochs"] == 4 and saved["train_samples_seen"] == 4 * 1565
    assert saved["seconds"] > 0
    assert saved["checkpoint"].endswith(".ckpt")
    # last.ckpt is the final epoch's state, whether or not that epoch was the best.
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 3


def test_train_from_python_ends_its_claim_so_a_second_fresh_run_is_refused(tmp_path):
    """``train(cfg)`` called from Python (not through the command) twice into one directory in
    one process: the first call's claim on the directory ends with it, so a second fresh run is
    refused as it would be from a new process (it used to find the first claim's stale answer,
    "no run here", and train over the first run); a resume of it goes on; no lock is left."""
    overrides = ["data=frey", "model.latent=2", "logger=none", "callbacks.figures=null",
                 "callbacks.bound_curve=null", *QUIET]
    train(compose_train([*overrides, "trainer.max_epochs=1"], tmp_path))
    assert not rundir.claimed(tmp_path)
    first = (tmp_path / "results.json").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(compose_train([*overrides, "trainer.max_epochs=1"], tmp_path))
    assert (tmp_path / "results.json").read_text() == first  # nothing rewritten
    resumed = train(compose_train([*overrides, "trainer.max_epochs=2", "ckpt_path=last"],
                                  tmp_path))
    assert resumed["epochs"] == 2
    assert not rundir.claimed(tmp_path)
    assert str(tmp_path.resolve()) not in open_paths()


def test_training_without_validation_or_test_batches_still_writes_results(tmp_path):
    """trainer.limit_val_batches=0 (and limit_test_batches=0) skips those splits: the run ends
    with results.json without their bounds, its checkpoint the last, and no traceback."""
    cfg = compose_train(["data=frey", "model.latent=2", "trainer.max_epochs=1", "logger=none",
                         "trainer.limit_val_batches=0", "trainer.limit_test_batches=0", *QUIET],
                        tmp_path)
    results = train(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "completed" and math.isfinite(saved["train/elbo"])
    assert "val/elbo" not in saved and "test/elbo" not in saved
    assert saved["checkpoint"].endswith("last.ckpt")
    assert results["train/elbo"] == saved["train/elbo"]


def _run(args, monkeypatch, capsys, cwd):
    """``vae-train <args>`` (= ``python train.py``) from ``cwd``, in this process: Hydra's basic
    launcher runs a sweep's jobs in the process too."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    return run(cli.train, args, monkeypatch, capsys, cwd)


def test_multirun_writes_one_results_file_per_job(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    proc = _run(["-m", "model.latent=2,3", "trainer.max_epochs=1", "logger=none",
                 "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
                 "callbacks.figures.n_points=0", f"hydra.sweep.dir={sweep}", *QUIET],
                monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    assert sorted(json.loads(p.read_text())["latent"] for p in results) == [2, 3]


@pytest.mark.parametrize(
    "args,words",
    [
        (["model.latent=0"], ["model.latent=0", "integer >= 1"]),
        (["data=cifar"], ["cifar", "Available options", "frey", "mnist"]),
        (["data=mnist", "data.root=nodata", "data.download=false"],
         ["error: Missing train-images-idx3-ubyte.gz", "nodata/mnist", "md5"]),
    ],
)
def test_cli_rejects_bad_input_before_training(args, words, tmp_path, monkeypatch, capsys):
    proc = _run([*args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys, tmp_path)
    assert proc.code != 0
    for word in words:
        assert word in proc.err, proc.err
    assert "Traceback" not in proc.err + proc.out
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_printing_the_config_does_not_import_torch(script, tmp_path):
    """`--cfg job` (like `--help`) composes the config only: no torch or Lightning import."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / script), "--cfg", "job"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed:" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "hydra" in imported and not imported & {"torch", "lightning"}


def test_a_short_runs_transient_training_bound_is_not_divergence(tmp_path):
    """The verdict is the best checkpoint's validation bound: a run of a few steps whose epoch
    average holds the first steps' transient (seen: -3157 nats after 20 Adagrad steps on MNIST,
    validation -310 against -544 untrained) completed; without validation the training bound
    judges, and a non-finite training bound is divergence whatever the validation says."""
    from omegaconf import OmegaConf

    from vae_lightning.errors import Diverged
    from vae_lightning.train import _judge

    cfg = OmegaConf.create({"output_dir": str(tmp_path)})
    assert _judge({"val/elbo": -310.0, "train/elbo": -3157.0}, -544.0, cfg,
                  write=False)["status"] == "completed"
    for results in ({"train/elbo": -3157.0}, {"val/elbo": -1500.0, "train/elbo": -300.0},
                    {"val/elbo": -310.0, "train/elbo": float("nan")}):
        with pytest.raises(Diverged, match="diverged"):
            _judge(dict(results), -544.0, cfg, write=False)
