"""Loggers: TensorBoard's hp_metric is the run's best val/elbo (never Lightning's placeholder);
logger=mlflow writes the metrics, the config, the figures and the run's tags into a local store
(SQLite and a folder), offline; logger=many writes CSV, TensorBoard, W&B and MLflow at once."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from compose import compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from vae_lightning.errors import UnwritableError
from vae_lightning.loggers import HP_METRIC
from vae_lightning.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
TINY = ["data=frey", "model.latent=2", "trainer.max_epochs=1", *QUIET]
FIGURES = {"manifold", "samples", "reconstructions", "latents", "curves"}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline and MLflow on its local store: nothing reaches the network."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DIR": str(tmp_path), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "config"),
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def _hparams(events: EventAccumulator) -> dict[str, HParamsPluginData]:
    """The records of TensorBoard's HPARAMS tab, by tag (none when nothing was written)."""
    try:
        contents = events.PluginTagToContent("hparams")
    except KeyError:
        return {}
    return {tag: HParamsPluginData.FromString(content) for tag, content in contents.items()}


def _mlflow_run(store: Path):
    """The only run in the local MLflow store in folder ``store``, and a client to read it."""
    from mlflow.tracking import MlflowClient

    assert (store / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vae-lightning")  # beside MLflow's "Default"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_tensorboard_shows_a_run_started_again_where_one_stopped_without_the_stopped_steps(
        tmp_path, monkeypatch, capsys):
    """A run stopped in its first epoch leaves its event file; the run started again in its
    directory (rundir.is_run) writes beside it. Its writer marks the restart (purge_step), so
    TensorBoard shows each step once (before: step 0 twice, the stopped run's and the new)."""
    from test_hostile import run

    from vae_lightning import cli

    command = [*TINY, "trainer.max_epochs=2", "logger=tensorboard", "trainer.log_every_n_steps=1",
               "callbacks.figures=null", f"hydra.run.dir={tmp_path / 'run'}"]
    term = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=fit",
            "+callbacks.term.hook=on_train_batch_start"]
    assert run(cli.train, [*command, *term], monkeypatch, capsys, tmp_path).code == 143
    assert run(cli.train, command, monkeypatch, capsys, tmp_path).code == 0
    steps = [event.step for event in _events(tmp_path / "run").Scalars("train/loss")]
    assert steps and len(steps) == len(set(steps)) and steps[0] == 0


def test_tensorboard_hp_metric_is_the_best_val_elbo(tmp_path):
    results = train(compose_train(["data=frey", "model.latent=2", "trainer.max_epochs=3",
                                   "trainer.limit_train_batches=2", "logger=tensorboard", *QUIET],
                                  tmp_path))
    events = _events(tmp_path)
    val = [e.value for e in events.Scalars("val/elbo")]
    assert len(val) >= 3  # each epoch's, then the best checkpoint's evaluation
    hp_metric = events.Scalars(HP_METRIC)
    assert len(hp_metric) == 1  # written once, when training ends: no placeholder -1 before it
    assert hp_metric[0].value == pytest.approx(max(val[:3]))
    # The score of the best checkpoint (the one results.json evaluates again, with new noise).
    states = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    best = next(state["best_model_score"] for key, state in states.items()
                if "'monitor': 'val/elbo'" in key)
    assert hp_metric[0].value == pytest.approx(float(best))
    assert Path(results["checkpoint"]).name == f"best-epoch{val.index(max(val[:3])):03d}.ckpt"
    # The HPARAMS tab's records: the hyperparameters and the metric they are compared by.
    experiment = _hparams(events)["_hparams_/experiment"].experiment
    assert [metric.name.tag for metric in experiment.metric_infos] == [HP_METRIC]
    assert "model/latent" in {hparam.name for hparam in experiment.hparam_infos}


def test_tensorboard_without_validation_writes_no_hp_metric(tmp_path):
    train(compose_train([*TINY, "trainer.limit_train_batches=2", "data.val_size=0",
                         "logger=tensorboard"], tmp_path))
    tags = _events(tmp_path).Tags()
    assert "train/elbo" in tags["scalars"] and "test/elbo" in tags["scalars"]
    assert HP_METRIC not in tags["scalars"] and "val/elbo" not in tags["scalars"]
    assert _hparams(_events(tmp_path)) == {}


def test_mlflow_writes_metrics_config_figures_and_tags_into_a_local_store(offline, tmp_path):
    store = tmp_path / "mlruns"
    train(compose_train([*TINY, "logger=mlflow", f"logger.mlflow.save_dir={store}",
                         "++tags=[first-hour,frey]"], tmp_path / "run"))
    # MLflow's process-wide tracking URI is not left behind: the next run reads its own config.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    client, run = _mlflow_run(store)
    assert run.info.status == "FINISHED"
    assert {"train/elbo", "val/elbo", "test/elbo", "train/samples_seen"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "val/elbo")) >= 2  # epoch, best ckpt
    assert run.data.params["model/latent"] == "2"
    assert run.data.params["data/_target_"] == "vae_lightning.data.FreyFaceDataModule"
    assert run.data.tags["first-hour"] == "true" and run.data.tags["frey"] == "true"
    figures = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"{name}.png" for name in FIGURES}
    assert Path(run.info.artifact_uri).is_relative_to(store / "mlartifacts")
    assert (Path(run.info.artifact_uri) / "figures" / "manifold.png").read_bytes() == (
        tmp_path / "run" / "figures" / "manifold.png").read_bytes()


def test_mlflow_store_defaults_to_the_directory_the_run_starts_in(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = compose_train(["logger=mlflow"], tmp_path / "run")
    assert cfg.logger.mlflow.save_dir == str(tmp_path)
    assert cfg.logger.mlflow.tracking_uri is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert compose_train(["logger=mlflow"], tmp_path / "run").logger.mlflow.tracking_uri == (
        "http://tracking.example:5000")


def test_an_unwritable_mlflow_store_is_refused_before_training(offline, tmp_path):
    """A real read-only filesystem as the store's folder: an UnwritableError (exit 74) naming
    the key, before the first step."""
    store = tmp_path / "ro"
    store.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(store)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {mount.stderr.strip()}")
    run_dir = tmp_path / "run"
    try:
        with pytest.raises(UnwritableError) as refused:
            train(compose_train([*TINY, "logger=mlflow", f"logger.mlflow.save_dir={store}"],
                                run_dir))
    finally:
        subprocess.run(["umount", str(store)], capture_output=True)
    assert str(refused.value).startswith(f"Cannot write into {store}: {store} is not writable")
    assert "logger.mlflow.save_dir" in str(refused.value)
    assert refused.value.exit_code == 74
    assert not (run_dir / "checkpoints").exists()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


@pytest.mark.slow
def test_mlflow_ui_started_where_the_run_was_shows_it(offline, monkeypatch, tmp_path):
    """`mlflow ui` with no arguments, in the directory the run was started from, serves the
    run's metrics, tags and figures (offline, on this machine)."""
    monkeypatch.chdir(tmp_path)
    train(compose_train([*TINY, "trainer.limit_train_batches=2", "logger=mlflow",
                         "++tags=[first-hour]"], tmp_path / "run"))
    _, run = _mlflow_run(tmp_path)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                _get(url)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "mlflow ui did not start in 120 s"
                time.sleep(1)
        shown = json.loads(_get(f"{url}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}"))
        assert {"val/elbo", "test/elbo"} <= {m["key"] for m in shown["run"]["data"]["metrics"]}
        assert {"key": "first-hour", "value": "true"} in shown["run"]["data"]["tags"]
        figure = _get(f"{url}/get-artifact?path=figures/manifold.png"
                      f"&run_uuid={run.info.run_id}")
        assert figure == (tmp_path / "run" / "figures" / "manifold.png").read_bytes()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_many_writes_every_logger(offline, tmp_path):
    store, run_dir = tmp_path / "mlruns", tmp_path / "run"
    train(compose_train([*TINY, "logger=many", f"logger.mlflow.save_dir={store}"], run_dir))
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert any(row.get("test/elbo") for row in rows)
    events = _events(run_dir)
    assert {"val/elbo", "test/elbo", HP_METRIC} <= set(events.Tags()["scalars"])
    assert "figures/manifold" in events.Tags()["images"]
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    images = {p.name.split("_")[0]
              for p in (wandb_runs[0] / "files" / "media" / "images" / "figures").glob("*.png")}
    assert images == FIGURES
    client, run = _mlflow_run(store)
    assert {"val/elbo", "test/elbo"} <= set(run.data.metrics)
    assert not [tag for tag in run.data.tags if not tag.startswith("mlflow.")]  # none given
    assert len(client.list_artifacts(run.info.run_id, "figures")) == len(FIGURES)


def test_a_resume_from_an_earlier_checkpoint_keeps_the_later_rows_of_metrics_csv(tmp_path):
    """A resume drops metrics.csv's rows after the checkpoint's step (a killed run's steps,
    logged again). Resumed from an earlier checkpoint than last.ckpt (train.py keeps that
    last.ckpt), those rows were another branch's history and were deleted: they are now first
    written to metrics-after-step<N>.csv (-2 where taken); a plain resume keeps no file."""
    from vae_lightning.loggers import CSVLogger

    def logged(steps):
        logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
        for step in steps:
            logger.log_metrics({"train/elbo": -float(step)}, step=step)
        logger.save()
        return logger

    def rows(path):
        with open(path, newline="") as file:
            return [int(row["step"]) for row in csv.DictReader(file)]

    folder = tmp_path / "csv"
    logged(range(10))
    branch = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    branch.keep_dropped = True
    branch.resume_at(4)
    assert rows(folder / "metrics.csv") == [0, 1, 2, 3, 4]
    assert rows(folder / "metrics-after-step4.csv") == [5, 6, 7, 8, 9]
    logged(range(5, 8))  # the branch logs its own steps 5..7
    again = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    again.keep_dropped = True
    again.resume_at(4)
    assert rows(folder / "metrics-after-step4-2.csv") == [5, 6, 7]
    plain = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    plain.resume_at(2)  # a killed run's resume: its rows are logged again, none kept
    assert rows(folder / "metrics.csv") == [0, 1, 2]
    assert sorted(p.name for p in folder.glob("metrics*.csv")) == [
        "metrics-after-step4-2.csv", "metrics-after-step4.csv", "metrics.csv"]
