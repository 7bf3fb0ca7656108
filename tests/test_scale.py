"""Multi-process DDP on CPU, mixed precision and torch.compile."""

import json
import math
import subprocess
import sys

import pytest
import torch
from compose import REPO, compose_train
from models import small_vae

from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.data import FreyFaceDataModule
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
SMALL = ["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
         "model.decoder.net.hidden=[32]", *QUIET, "logger=none"]


def _ddp_run(run_dir, *overrides):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *SMALL, "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.max_epochs=2", "callbacks.bound_curve.start=1000",
         f"hydra.run.dir={run_dir}", *overrides],
        cwd=run_dir.parent, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def test_two_process_ddp_on_cpu_matches_one_process_evaluation(tmp_path):
    results = _ddp_run(tmp_path / "ddp")
    run_dir = tmp_path / "ddp"
    # Two ranks, each 782 faces of the 1565 per epoch (one sits out).
    assert results["train_samples_seen"] == 2 * 2 * 782
    # Fig. 2's curve: rank 0 evaluates mid-training while rank 1 waits at the next all-reduce.
    curve = json.loads((run_dir / "curve.json").read_text())
    seen = [point["samples_seen"] for point in curve["points"]]
    assert seen[0] >= 1000 and seen == sorted(set(seen)) and seen[-1] == 2 * 2 * 782
    assert len(seen) >= 3 and curve["train_size"] == 1565
    assert all(math.isfinite(p["test/elbo"]) and math.isfinite(p["train/elbo"])
               for p in curve["points"])

    # The same checkpoint evaluated by one process over the whole test split.
    checkpoint = read_checkpoint(results["checkpoint"])
    model = build_run(compose_train(SMALL, tmp_path)).model
    model.load_state_dict(checkpoint["state_dict"])
    datamodule = FreyFaceDataModule()
    datamodule.setup("test")
    with torch.no_grad():
        bounds = [model.bound(datamodule.to_inputs(b)[0]) for b in datamodule.test_dataloader()]
    kl = torch.cat([b.kl for b in bounds])
    elbo = torch.cat([b.elbo for b in bounds])
    assert len(elbo) == 200
    # The KL is analytic, so deterministic: the ranks' shards must average to exactly this.
    assert results["test/kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    # The reconstruction term is a one-sample estimate: equal within its standard errors.
    tolerance = 4 * math.sqrt(2) * elbo.std().item() / math.sqrt(len(elbo))
    assert abs(results["test/elbo"] - elbo.mean().item()) < tolerance


@pytest.mark.slow  # three 2-rank DDP runs
def test_a_ddp_run_with_dynamic_binarization_resumes_exactly(tmp_path):
    """Both ranks go on with their own binarization streams after a resume (every rank's
    generator states are in the checkpoint): the resumed run ends with the weights of an
    uninterrupted one. (Rank 1 restarted its stream from the seed before.)"""
    from compose import mnist_like

    data = mnist_like(tmp_path / "data", train=300, test=50)
    common = ["data=mnist", f"data.root={data}", "data.val_size=50", "data.batch_size=25",
              "data.binarize=dynamic", "model.latent=2", "model.encoder.net.hidden=[16]",
              "model.decoder.net.hidden=[16]", *QUIET, "logger=none", "callbacks.figures=null",
              "callbacks.bound_curve=null", "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.devices=2", "trainer.max_epochs=-1"]

    def run(run_dir, *overrides):
        run_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), *common,
                               f"hydra.run.dir={run_dir}", *overrides], cwd=run_dir,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")

    cut = run(tmp_path / "cut", "trainer.max_steps=3")
    assert len(cut["MNISTDataModule"]["ranks"]) == 2
    resumed = run(tmp_path / "cut", "trainer.max_steps=8",
                  f"ckpt_path={tmp_path / 'cut' / 'checkpoints' / 'last.ckpt'}")
    reference = run(tmp_path / "ref", "trainer.max_steps=8")
    assert resumed["global_step"] == reference["global_step"] == 8
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name


@pytest.mark.slow  # two 2-rank DDP runs; steps_per_batch itself is tested on one process
def test_ddp_with_several_steps_per_batch_trains_as_with_one(tmp_path):
    """Manual optimization under DDP: every inner step's gradients are all-reduced, so the
    parameters are those of one step per batch (which Lightning steps itself)."""
    runs = [_ddp_run(tmp_path / f"k{k}", f"data.steps_per_batch={k}") for k in (1, 2)]
    one, two = (read_checkpoint(tmp_path / f"k{k}" / "checkpoints" / "last.ckpt") for k in (1, 2))
    assert one["global_step"] == two["global_step"] == 2 * 8  # 782 faces a rank: 8 minibatches
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], value, rtol=0, atol=1e-6)
    assert runs[0]["test/elbo"] == pytest.approx(runs[1]["test/elbo"], abs=1e-4)


@pytest.mark.slow  # spawns two ranks inside a Hydra multirun subprocess
def test_ddp_spawn_runs_inside_a_hydra_multirun(tmp_path):
    """`-m` with trainer=ddp_spawn: the ranks are spawned (the module pickled to them) rather
    than the script relaunched, so the sweep runs once: one job here, to keep the test short."""
    sweep = tmp_path / "multirun"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *SMALL,
         "trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.max_epochs=1",
         "~callbacks.bound_curve", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(sweep.glob("*/results.json"))
    assert [r.parent.name for r in results] == ["0"]
    for path in results:
        result = json.loads(path.read_text())
        assert result["train_samples_seen"] == 2 * 782  # two ranks, one epoch
        assert all(math.isfinite(result[k]) for k in ("train/elbo", "val/elbo", "test/elbo"))


@pytest.mark.parametrize("steps_per_batch", [1, 4])
def test_bf16_mixed_precision_trains_with_finite_bound(tmp_path, steps_per_batch):
    results = train(compose_train([*SMALL, "trainer.precision=bf16-mixed", "trainer.max_epochs=2",
                                   f"data.steps_per_batch={steps_per_batch}"], tmp_path))
    for key in ("val/elbo", "test/elbo", "test/kl"):
        assert math.isfinite(results[key])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_under_autocast_the_networks_run_in_half_and_the_bound_in_float32(dtype, likelihood):
    """What 16-mixed (GPU) and bf16-mixed do to the model, on the CPU's autocast: the MLPs run in
    half precision, the densities, KL and log-probabilities in float32, and an update is applied
    with finite parameters (float16 with a GradScaler, as Lightning's 16-mixed does). The
    Gaussian decoder is at its variance floor (1e-4) with means far from the data, so the
    squared errors over the variance sum to about 2.5e7 nats a face: beyond float16's range
    (65504), finite in float32."""
    from vae_lightning.likelihoods import Gaussian

    shape = (1, 28, 28)
    torch.manual_seed(0)
    x = torch.rand(32, *shape)
    if likelihood == "bernoulli":
        model, x = small_vae(shape, latent=20, hidden=(400,)), (x > 0.5).float()
    else:
        model = small_vae(shape, latent=20, hidden=(400,),
                          likelihood=Gaussian(mean_activation="identity"))
        with torch.no_grad():
            model.decoder.net[-1].bias[:784] = 3.0  # means far from pixels in [0, 1]
            model.decoder.net[-1].bias[784:] = -30.0  # log-variance below the floor
    torch.manual_seed(1)
    reference = model.bound(x)
    with torch.autocast("cpu", dtype=dtype):
        assert model.encoder.net(x).dtype == dtype
        torch.manual_seed(1)
        bound = model.bound(x)
    assert bound.recon.dtype == bound.kl.dtype == torch.float32
    if likelihood == "gaussian":
        assert reference.recon.mean() < -1e7  # the float16 overflow regime
    rtol = 1e-3 if dtype == torch.float16 else 1e-2
    torch.testing.assert_close(bound.recon, reference.recon, rtol=rtol, atol=1e-2)
    torch.testing.assert_close(bound.kl, reference.kl, rtol=rtol, atol=1e-2)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    applied = False
    attempts = 0
    while not applied:  # a GradScaler skips the steps whose gradients overflow
        attempts += 1
        assert attempts <= 30, "no update applied in 30 steps"
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = -model.bound(x).elbo.mean()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        applied = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler is not None or attempts == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_compile_flag_compiles_the_networks_in_place(tmp_path):
    model = build_run(compose_train([*SMALL, "model.compile=true"], tmp_path)).model
    plain = build_run(compose_train(SMALL, tmp_path)).model
    assert model.encoder.net._compiled_call_impl is not None
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints interchangeable


@pytest.mark.slow
def test_compiled_model_trains(tmp_path):
    try:
        results = train(compose_train([*SMALL, "model.compile=true", "trainer.max_epochs=1"],
                                      tmp_path))
    except Exception as err:  # no C++ toolchain for inductor, or an unsupported platform
        pytest.skip(f"torch.compile is not supported here: {type(err).__name__}: {err}")
    assert math.isfinite(results["test/elbo"])


def test_the_reported_bounds_are_float32_under_mixed_precision(tmp_path):
    """bf16-mixed trains under autocast, but the validation and test bounds (results.json,
    the best checkpoint's choice) are computed in float32: the same numbers as a float32
    Trainer's for the same weights (they differed in the fourth digit)."""
    import lightning as L

    from vae_lightning.train import build_run

    run = build_run(compose_train([*SMALL, "data.batch_size=200"], tmp_path))
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        trainer = L.Trainer(precision=precision, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_test_batches=2)
        torch.manual_seed(0)  # the same draws of z
        results[precision] = trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
    assert results["bf16-mixed"]["test/elbo"] == results["32-true"]["test/elbo"]
