"""W&B: offline runs (no API key) write the metrics, the figures and the run's tags into their run
files, and the jobs of one multirun sweep share a group."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
from compose import REPO, compose_train
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, read_write
from wandb.proto.wandb_internal_pb2 import RunRecord

from vae_lightning.resolvers import sweep_group
from vae_lightning.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def test_sweep_group_is_the_sweep_dir_under_multirun_only(tmp_path):
    cfg = compose_train(["logger=wandb"], tmp_path)
    assert sweep_group() is None and cfg.logger.wandb.group is None
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg):
        hydra_cfg.mode = "MULTIRUN"
        hydra_cfg.sweep.dir = "multirun/2026-01-31/12-00-00"
    assert OmegaConf.to_container(cfg.logger, resolve=True)["wandb"]["group"] == (
        "multirun/2026-01-31/12-00-00")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DIR": str(tmp_path), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "config")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _transaction_log(run_dir: Path, timeout: float = 30.0) -> bytes:
    """The run's .wandb log, once its writer (in the wandb-core service, which may still be
    flushing after ``wandb.finish()`` returns) has written the final test metrics."""
    deadline = time.monotonic() + timeout
    while True:
        log = next(run_dir.glob("run-*.wandb")).read_bytes()
        if b"test/elbo" in log or time.monotonic() > deadline:
            return log
        time.sleep(0.2)


def test_tags_are_the_runs_tags_and_none_by_default(tmp_path):
    assert compose_train(["logger=wandb"], tmp_path).logger.wandb.tags == []
    cfg = compose_train(["logger=wandb", "++tags=[first-hour,frey]"], tmp_path)
    assert cfg.logger.wandb.tags == ["first-hour", "frey"]


def test_wandb_init_gets_no_anonymous_setting(tmp_path):
    """Lightning passes anonymous=None to wandb.init, which W&B warns about on every run; ours
    leaves it out, and keeps an anonymous setting the user asks for."""
    from vae_lightning.loggers import WandbLogger

    assert "anonymous" not in WandbLogger(save_dir=str(tmp_path), offline=True)._wandb_init
    assert WandbLogger(save_dir=str(tmp_path), offline=True,
                       anonymous=True)._wandb_init["anonymous"] == "allow"


def test_offline_run_writes_metrics_figures_and_tags(offline, tmp_path):
    cfg = compose_train(["data=frey", "model.latent=2", "logger=wandb", "trainer.max_epochs=2",
                         "trainer.limit_train_batches=2", "++tags=[first-hour,frey-2d]", *QUIET],
                        tmp_path)
    results = train(cfg)
    assert wandb.run is None  # train() closes its run
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    images = {p.name.split("_")[0] for p in (files / "media" / "images" / "figures").glob("*.png")}
    assert {"manifold", "samples", "reconstructions", "latents", "curves"} <= images
    # Offline, wandb writes the history, config and artifacts into the run's .wandb log.
    log = _transaction_log(runs[0])
    # The run config: the model's encoder (its network's hidden sizes) among it.
    for key in (b"train/elbo", b"val/elbo", b"test/elbo", b"figures/manifold",
                b"vae_lightning.posteriors.Encoder", b"hidden"):
        assert key in log, key
    for tag in ("first-hour", "frey-2d"):  # the run record's tags, as wandb encodes them
        assert RunRecord(tags=[tag]).SerializeToString() in log, tag
    run_id = runs[0].name.rsplit("-", 1)[1]
    assert f"model-{run_id}".encode() in log  # the checkpoint artifact
    assert Path(results["checkpoint"]).name.encode() in log


def test_api_key_never_reaches_logs_or_config_dumps(offline, monkeypatch, tmp_path):
    secret = "f3e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d"  # 40 hex characters, like a real key
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = compose_train(["data=frey", "model.latent=2", "logger=wandb", "trainer.max_epochs=1",
                         "trainer.limit_train_batches=2", *QUIET], tmp_path)
    train(cfg)
    _transaction_log(next((tmp_path / "wandb").glob("offline-run-*")))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.suffix == ".ckpt" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


def test_jobs_in_one_process_get_their_own_runs(offline, tmp_path):
    """Hydra's basic launcher runs a sweep's jobs in one process: each must log its own run."""
    for job in ("0", "1"):  # no figures or curve: what each run logs is another test's
        train(compose_train(["data=frey", "model.latent=2", "logger=wandb",
                             "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
                             "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                             "~callbacks.figures", "~callbacks.bound_curve", *QUIET],
                            tmp_path / job))
    runs = [next((tmp_path / job / "wandb").glob("offline-run-*")) for job in ("0", "1")]
    assert runs[0].name != runs[1].name
    for run in runs:
        assert b"test/elbo" in _transaction_log(run)


def test_no_api_key_is_one_paragraph_before_any_step(tmp_path):
    """Online W&B without an API key, outside a terminal that could ask for one: W&B's
    UsageError (a 40-line traceback, exit code 1) becomes one error paragraph that says what to
    do, exit code 2, raised when Lightning first logs, before the first training step. In a
    process of its own: W&B keeps the settings of an earlier (offline) run of this process."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_ANONYMOUS")}
    env.update({"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc"), "WANDB_SILENT": "true",
                "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "config"),
                "WANDB_CACHE_DIR": str(tmp_path / "cache")})
    run = subprocess.run([sys.executable, str(REPO / "train.py"), "data=frey", "model.latent=2",
                          "logger=wandb", "trainer.max_epochs=1", *QUIET,
                          f"hydra.run.dir={tmp_path / 'run'}"], env=env, cwd=tmp_path,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search("wandb login.*WANDB_MODE=offline.*logger=csv",
                                          errors[0]), run.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step was taken


@pytest.mark.parametrize("tampered", ["../x", " abc", "a:b"])
def test_a_tampered_wandb_id_in_a_checkpoint_is_refused_before_the_resume(offline, tmp_path,
                                                                         tampered):
    """ResumeState's wandb_id is handed to W&B's logger on resume: an id W&B does not take was
    refused by W&B with advice to log in (wrong: the file was altered); now one CheckpointError
    naming the id, before the resume, as a tampered MLflow id."""
    import torch

    from vae_lightning.errors import CheckpointError

    run = tmp_path / "run"
    tiny = ["data=frey", "model.latent=2", *QUIET]
    train(compose_train([*tiny, "trainer.max_steps=2", "logger=wandb"], run))
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert isinstance(checkpoint["callbacks"]["ResumeState"]["wandb_id"], str)
    checkpoint["callbacks"]["ResumeState"]["wandb_id"] = tampered
    torch.save(checkpoint, last)
    with pytest.raises(CheckpointError) as refused:
        train(compose_train([*tiny, "trainer.max_steps=4", "logger=wandb", f"ckpt_path={last}"],
                            run))
    assert f"wandb_id is {tampered!r}, not a W&B run id" in str(refused.value)
    assert "login" not in str(refused.value)
