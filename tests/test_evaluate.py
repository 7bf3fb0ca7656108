"""The IW estimate of log p(x) and eval.py: k = 1 is the ELBO, chunking changes nothing, the
estimate is >= the ELBO and rises with k, and eval.py writes eval.json from a real checkpoint."""

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from compose import CONF, REPO, compose_train
from hydra import compose, initialize_config_dir

from vae_lightning.evaluate import (
    Estimate,
    load_checkpoint,
    log_likelihood,
    output_dir_for,
    run_eval,
)
from vae_lightning.objectives import draw, iwae
from vae_lightning.resume import CheckpointError
from vae_lightning.train import build_datamodule, build_model

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _build(cfg_or_overrides):
    cfg = cfg_or_overrides if not isinstance(cfg_or_overrides, list) else compose_train(
        cfg_or_overrides)
    datamodule = build_datamodule(cfg)
    return datamodule, build_model(cfg, datamodule.input_dim)


@pytest.fixture(scope="module")
def trained():
    """A VAE with a 2-d latent space trained for an epoch on Frey Face, and 20 validation faces."""
    torch.manual_seed(0)
    datamodule, model = _build(["data=frey", "model.latent=2"])
    datamodule.setup("fit")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for batch in datamodule.train_dataloader():
        x, _ = datamodule.on_after_batch_transfer(batch, 0)
        loss = -model.bound(x).elbo.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, _ = datamodule.on_after_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
    return model.eval(), x[:20]


def _estimate(model, x, k, chunk, seed=0):
    torch.manual_seed(seed)
    return log_likelihood(model, x, k, chunk)


def test_k1_is_the_elbo_of_estimator_a(trained):
    model, x = trained
    elbo, iw = _estimate(model, x, k=1, chunk=1)
    torch.manual_seed(0)
    with torch.no_grad():
        samples = draw(x, model.encoder(x), model.decoder, model.prior, 1)
    torch.testing.assert_close(iw, samples.bound().elbo)
    torch.testing.assert_close(iw, iwae(samples.log_w))
    torch.testing.assert_close(elbo, iw)


@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_chunking_over_k_gives_the_one_pass_estimate(trained, chunk):
    model, x = trained
    one_pass = _estimate(model, x, k=64, chunk=64)
    chunked = _estimate(model, x, k=64, chunk=chunk)
    for a, b in zip(one_pass, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


def test_iw_estimate_is_above_the_elbo_and_rises_with_k(trained):
    model, x = trained
    means = []
    for k in (1, 10, 100):
        elbo, iw = _estimate(model, x, k=k, chunk=25)
        assert (iw >= elbo - 1e-3).all()  # Jensen, on the same samples
        means.append(iw.mean().item())
    assert means[0] < means[1] < means[2], means
    assert means[2] - means[0] > 1.0, means  # nats per data point


def test_estimate_reports_nats_bits_per_dim_and_standard_error():
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    est = Estimate.of(values, input_dim=10)
    assert est.nats == pytest.approx(3.0)
    assert est.nats_se == pytest.approx(values.std().item() / 2)
    assert est.bits_per_dim == pytest.approx(-3.0 / (10 * math.log(2)))
    assert est.bits_per_dim_se == pytest.approx(est.nats_se / (10 * math.log(2)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real Lightning checkpoint of a Frey Face VAE trained for a few steps."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_train(["data=frey", "model.latent=2", "callbacks=none", "logger=none"], run)
    torch.manual_seed(0)
    datamodule, model = _build(cfg)
    trainer = L.Trainer(max_steps=5, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    path = run / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _eval_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=overrides)


def test_eval_writes_eval_json_from_a_checkpoint(checkpoint):
    cfg, model, raw = load_checkpoint(checkpoint)
    assert cfg.model.latent == 2 and raw["samples_seen"] == 5 * 100
    results = run_eval(_eval_cfg([f"ckpt_path={checkpoint}", "eval.k=50", "eval.chunk=16",
                                  "eval.device=cpu"]))
    saved = json.loads((output_dir_for(checkpoint) / "eval.json").read_text())
    assert output_dir_for(checkpoint) == checkpoint.parent.parent
    assert saved["k"] == 50 and saved["split"] == "test" and saved["n"] == 200
    assert saved["checkpoint"] == str(checkpoint.resolve())
    for name in ("elbo", "iw"):
        assert all(math.isfinite(v) for v in saved[name].values())
        assert saved[name]["bits_per_dim"] == pytest.approx(
            -saved[name]["nats"] / (560 * math.log(2)))
    assert saved["iw"]["nats"] >= saved["elbo"]["nats"] - 1e-3
    assert results["iw"] == saved["iw"]


def test_bad_checkpoints_raise_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "bad.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a vae-lightning VAE checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")


def test_eval_cli_reports_a_corrupt_checkpoint_without_traceback(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"\x00" * 100)
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), f"ckpt_path={tmp_path / 'bad.ckpt'}",
         f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "corrupt" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
