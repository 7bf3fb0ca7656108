"""Never lose work: exact resume after a crash, corrupt checkpoints, NaN losses, reproducibility."""

import json
import os
import subprocess
import sys

import pytest
import torch
from compose import REPO, compose_train
from test_hostile import run

from vae_lightning import cli
from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.errors import CheckpointError, NonFiniteLossError
from vae_lightning.train import build_run, train

SMALL = ["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
         "model.decoder.net.hidden=[32]",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=none",
         "callbacks.figures=null"]  # no figure is read here
METRICS = ("val/elbo", "val/recon", "val/kl", "test/elbo", "test/recon", "test/kl")


def _train_cli(args, cwd):
    # The threads this process trains on: the killed run's first steps are compared with a run
    # trained here (test_killed_run_resumes_from_last_and_matches_an_uninterrupted_run).
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _train_here(args, cwd, monkeypatch, capsys):
    """``vae-train <args>`` in this process (from ``cwd``), as ``_train_cli`` runs it."""
    result = run(cli.train, args, monkeypatch, capsys, cwd)
    assert result.code == 0, result.err[-2000:]
    return result


def test_killed_run_resumes_from_last_and_matches_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                       capsys, one_thread):
    """The killed run is another process (SIGKILL); the resume and the uninterrupted run are
    made in this process, through the same command, on as many threads as the killed run."""
    # 16 steps per epoch: step 40 is mid-way through the third epoch, after last.ckpt at step 32.
    kill = ["+callbacks.kill._target_=fault_injection.KillAtStep", "+callbacks.kill.step=40"]
    killed = _train_cli([*SMALL, "trainer.max_epochs=4", *kill], tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 32
    assert not (run_dir / "results.json").exists()

    _train_here([*SMALL, "trainer.max_epochs=4", "ckpt_path=last"], tmp_path, monkeypatch,
                capsys)
    assert list(tmp_path.glob("outputs/*/*")) == [run_dir]  # continued in its own directory
    after_resume = json.loads((run_dir / "results.json").read_text())

    _train_here([*SMALL, "trainer.max_epochs=4", f"hydra.run.dir={tmp_path / 'ref'}"],
                tmp_path, monkeypatch, capsys)
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert after_resume["train_samples_seen"] == reference["train_samples_seen"] == 4 * 1565
    for key in METRICS:
        assert after_resume[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-4), key


# Frey Face: 1565 training images, 16 steps of 100 an epoch; step 40 is 8 steps into the third.
LENGTHS = {"max_steps": ("trainer.max_steps=40", "trainer.max_epochs=3"),
           "max_samples": (f"trainer.max_samples={2 * 1565 + 800}",
                           f"trainer.max_samples={3 * 1565}")}


@pytest.mark.parametrize("stop", LENGTHS)
@pytest.mark.parametrize("steps_per_batch", [1, 2])
def test_a_run_ended_mid_epoch_by_its_length_continues_exactly(tmp_path, monkeypatch, capsys,
                                                               one_thread, steps_per_batch, stop):
    """A length of 40 steps (or their samples) ends mid-way through the third epoch; continued
    to three whole epochs from that mid-epoch last.ckpt, the run takes the rest of the epoch's
    data order (not the epoch again from its start) and ends as an uninterrupted run does, its
    train/elbo (over the whole epoch, both parts) included. A max_samples stop validates where
    the uninterrupted run does not (Lightning validates when a run stops mid-epoch): validation
    draws in its own random stream, so that training's draws stay the same."""
    cut_length, full_length = LENGTHS[stop]
    common = [*SMALL, f"data.steps_per_batch={steps_per_batch}"]
    run_dir = tmp_path / "run"
    _train_here([*common, cut_length, f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch,
                capsys)
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 40
    cut = json.loads((run_dir / "results.json").read_text())
    assert (cut["epochs"], cut["steps"]) == (2, 40)  # whole epochs: the third was cut short
    _train_here([*common, full_length, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"],
                tmp_path, monkeypatch, capsys)
    continued = json.loads((run_dir / "results.json").read_text())
    _train_here([*common, full_length, f"hydra.run.dir={tmp_path / 'ref'}"], tmp_path,
                monkeypatch, capsys)
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert continued["train_samples_seen"] == reference["train_samples_seen"] == 3 * 1565
    assert continued["epochs"] == reference["epochs"] == 3
    for key in (*METRICS, "train/elbo"):
        assert continued.get(key) == pytest.approx(reference[key], rel=1e-6, abs=1e-4), key


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="ckpt_path=last: there is no .*last.ckpt"):
        build_run(compose_train([*SMALL, "ckpt_path=last"], tmp_path))


def test_resuming_with_another_model_names_the_difference_and_the_original_overrides(
        tmp_path, one_thread):
    # A last.ckpt is all it needs: two steps.
    train(compose_train([*SMALL, "trainer.max_epochs=1", "+trainer.limit_train_batches=2"],
                        tmp_path))
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model.latent=2\n- data=frey\n")
    last = tmp_path / "checkpoints" / "last.ckpt"
    other = [*SMALL, "model.latent=3", "model/likelihood=bernoulli", f"ckpt_path={last}"]
    with pytest.raises(CheckpointError) as err:
        build_run(compose_train(other, tmp_path))
    message = str(err.value)
    assert "model.latent=2 (this run: 3)" in message
    assert "model.decoder.likelihood._target_='vae_lightning.likelihoods.Gaussian'" in message
    assert "model.latent=2 data=frey" in message
    # Same model, other training settings (longer, compiled, another learning rate): resumable.
    build_run(compose_train([*SMALL, "trainer.max_epochs=5", "model.compile=true",
                         "model.optimizer.lr=0.0005", f"ckpt_path={last}"], tmp_path))
    # Another optimizer is refused: the saved state is Adam's.
    with pytest.raises(CheckpointError, match="model.optimizer._target_"):
        build_run(compose_train([*SMALL, "model/optimizer=adagrad", f"ckpt_path={last}"],
                            tmp_path))
    # Another number of steps per batch too: automatic and manual optimization count their
    # steps apart (a switch ran 15 steps and reported 10, its KL schedule restarted).
    with pytest.raises(CheckpointError, match=r"data.steps_per_batch=1 \(this run: 2\)"):
        build_run(compose_train([*SMALL, "data.steps_per_batch=2", f"ckpt_path={last}"],
                                tmp_path))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_a_clear_error_before_training(tmp_path, damage):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:
        model = build_run(compose_train(SMALL, tmp_path)).model
        torch.save({"state_dict": model.state_dict()}, path)
        path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError) as err:
        build_run(compose_train([*SMALL, f"ckpt_path={path}"], tmp_path))
    assert str(path) in str(err.value) and "corrupt" in str(err.value)
    assert str(err.value).count("Use another file") == 1  # one message, not one inside another


@pytest.mark.parametrize("steps_per_batch", [1, 3])  # with 3, step 5 is mid-batch
def test_nan_loss_stops_the_run_and_saves_a_loadable_last_good_state(tmp_path, steps_per_batch):
    cfg = compose_train([*SMALL, "trainer.max_epochs=2",
                         f"data.steps_per_batch={steps_per_batch}",
                         "+callbacks.nan._target_=fault_injection.NaNInputAtStep",
                         "+callbacks.nan.step=5"], tmp_path)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    message = str(err.value)
    assert "step 5" in message and "reconstruction term" in message
    saved = tmp_path / "checkpoints" / "nonfinite-step5.ckpt"
    assert str(saved) in message
    checkpoint = read_checkpoint(saved)
    assert checkpoint["global_step"] == 5
    model = build_run(compose_train(SMALL, tmp_path)).model
    model.load_state_dict(checkpoint["state_dict"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    results = json.loads((tmp_path / "results.json").read_text())  # the run's status, no metrics
    assert (results["status"], results["exit_code"], results["steps"]) == ("nonfinite", 3, 5)
    assert "test/elbo" not in results and str(saved) in results["message"]


def test_a_loss_non_finite_before_any_update_blames_the_data_not_the_step_size(tmp_path):
    """At step 0 no update has been made: "lower model.optimizer.lr" would be wrong advice
    (a condition vector of 1e30 gave it); the message points at the data's values."""
    cfg = compose_train([*SMALL, "+callbacks.nan._target_=fault_injection.NaNInputAtStep",
                         "+callbacks.nan.step=0"], tmp_path)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    message = str(err.value)
    assert "step 0" in message and "the step size is not the cause" in message
    assert "lower model.optimizer.lr" not in message


def test_parameters_broken_by_non_finite_gradients_of_a_finite_loss_are_named(tmp_path):
    """An update from NaN gradients while the loss was finite (step 3) breaks a parameter; the
    next step's loss is NaN. The message says the saved state already holds non-finite
    parameters and points to the best checkpoint, instead of offering that state, with "its
    largest parameter is nan", as the one to go on from."""
    cfg = compose_train([*SMALL, "trainer.max_epochs=2",
                         "+callbacks.nan._target_=fault_injection.NaNGradientAtStep",
                         "+callbacks.nan.step=3"], tmp_path)
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    message = str(err.value)
    assert "at step 4" in message and "already were not finite" in message, message
    assert "for inspection only" in message and "largest parameter is nan" not in message
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["status"], results["exit_code"]) == ("nonfinite", 3)


def test_same_seed_gives_identical_results(tmp_path, one_thread):
    def train_one(name):  # a few steps: equal results need no more
        return train(compose_train([*SMALL, "trainer.max_epochs=1", "seed=3",
                                    "+trainer.limit_train_batches=4"], tmp_path / name))

    first, second = train_one("a"), train_one("b")
    assert [first[k] for k in METRICS] == [second[k] for k in METRICS]
