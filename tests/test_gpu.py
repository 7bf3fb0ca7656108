"""On a CUDA GPU (marker ``gpu``; skipped without one): training in every precision with the data
on the device, torch.compile, the graphed step against the eager one, DDP on one GPU, and a GPU
checkpoint evaluated on the GPU and on the CPU. `pytest -m gpu` runs just these."""

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from compose import REPO, compose_train

from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.module import VAE
from vae_lightning.rebuild import load_model
from vae_lightning.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device (torch.cuda.is_available() is False)"),
]

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none"]
GPU = ["data=frey", "model.latent=5", "trainer=gpu", "data.on_device=true", *QUIET]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """Frey Face, 6 epochs on the GPU in float32 with the data on the device."""
    out = tmp_path_factory.mktemp("gpu")
    results = train(compose_train([*GPU, "trainer.max_epochs=6"], out))
    return out, results


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_training_on_the_gpu_raises_the_bound_in_every_precision(precision, tmp_path):
    initial = train(compose_train([*GPU, "trainer.max_epochs=1", "trainer.max_steps=1",
                                   f"trainer.precision={precision}"], tmp_path / "one"))
    results = train(compose_train([*GPU, "trainer.max_epochs=6",
                                   f"trainer.precision={precision}"], tmp_path / "six"))
    assert results["status"] == "completed"
    for key in ("val/elbo", "test/elbo", "train/elbo"):
        assert math.isfinite(results[key]), key
    # Six epochs lift the bound well above the untrained model's and one step's (nats/point).
    assert results["val/elbo"] > results["initial/val_elbo"] + 100
    assert results["val/elbo"] > initial["val/elbo"] + 50
    state = read_checkpoint(tmp_path / "six" / "checkpoints" / "last.ckpt")
    assert all(v.device.type == "cpu" for v in state["state_dict"].values())  # map_location cpu


class DeviceProbe(L.Callback):
    """Records where the model's parameters, the data module's splits and each batch live."""

    seen: set = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        splits = trainer.datamodule.splits.values()
        DeviceProbe.seen |= {("param", next(pl_module.parameters()).device.type),
                             ("batch", batch[0].device.type),
                             *(("split", t.device.type) for pair in splits for t in pair)}


def test_the_data_live_on_the_device_and_the_model_trains_there(tmp_path):
    DeviceProbe.seen = set()
    train(compose_train([*GPU, "trainer.max_epochs=1", "+callbacks.probe._target_="
                         "test_gpu.DeviceProbe"], tmp_path))
    assert DeviceProbe.seen == {("param", "cuda"), ("batch", "cuda"), ("split", "cuda")}


def test_compiled_model_trains_on_the_gpu(tmp_path):
    results = train(compose_train([*GPU, "model.compile=true", "trainer.max_epochs=3"], tmp_path))
    assert results["status"] == "completed"
    assert results["val/elbo"] > results["initial/val_elbo"] + 100


@pytest.mark.parametrize("objective, steps_per_batch", [("elbo", 1), ("elbo", 4), ("iwae", 2),
                                                        ("wake_sleep", 1), ("hvae", 1)])
def test_the_graphed_step_trains_as_the_eager_step(objective, steps_per_batch, tmp_path):
    """The captured graph computes what the eager step does; on CUDA the kernels may sum in a
    different order, so the runs agree closely rather than bit for bit. The HVAE's step holds a
    double backward (its leapfrog steps follow grad_z log p(x, z)) inside the captured graph."""
    runs = {}
    for graphed in (False, True):
        runs[graphed] = train(compose_train(
            [*GPU, f"model/objective={objective}", "trainer.max_epochs=3",
             f"data.steps_per_batch={steps_per_batch}", f"model.cuda_graph={str(graphed).lower()}"],
            tmp_path / str(graphed)))
    plain, graphed = runs[False], runs[True]
    assert graphed["steps"] == plain["steps"] == 3 * 16
    assert graphed["train_samples_seen"] == plain["train_samples_seen"]
    for key in ("train/elbo", "val/elbo", "test/elbo"):
        assert graphed[key] == pytest.approx(plain[key], abs=2.0), key


def test_a_gpu_checkpoint_evaluates_on_the_gpu_and_on_the_cpu(gpu_run):
    out, results = gpu_run
    checkpoint = results["checkpoint"]
    model, _, _ = load_model(checkpoint, VAE)
    assert next(model.parameters()).device.type == "cpu"
    estimates = {}
    for device in ("cuda", "cpu"):
        proc = subprocess.run(
            [sys.executable, str(REPO / "eval.py"), f"ckpt_path={checkpoint}", "eval.k=200",
             "eval.chunk=50", f"eval.device={device}", f"output_dir={out / device}",
             f"hydra.run.dir={out / device}"],
            cwd=out, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        estimates[device] = json.loads((out / device / "eval.json").read_text())
    gpu, cpu = estimates["cuda"], estimates["cpu"]
    assert gpu["n"] == cpu["n"] == 200
    for name in ("elbo", "iw"):  # two Monte-Carlo estimates of one model's bound
        se = math.hypot(gpu[name]["nats_se"], cpu[name]["nats_se"])
        assert gpu[name]["nats"] == pytest.approx(cpu[name]["nats"], abs=4 * se + 0.5), name
    assert gpu["iw"]["nats"] >= gpu["elbo"]["nats"] - 0.1


def test_ddp_on_one_gpu(tmp_path):
    run_dir = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *GPU, "trainer=ddp", "trainer.accelerator=gpu",
         "trainer.devices=1", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and math.isfinite(results["test/elbo"])
    assert results["train_samples_seen"] == 2 * 1565
