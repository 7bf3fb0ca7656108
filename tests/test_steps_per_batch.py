"""data.steps_per_batch: K optimizer steps per Lightning batch train exactly as K = 1."""

import csv

import pytest
import torch
from compose import compose_train

from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.data.sampling import ShardedBatchSampler
from vae_lightning.errors import ConfigError
from vae_lightning.train import train

SMALL = ["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
         "model.decoder.net.hidden=[32]",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures.n_points=0"]
# Frey cut to 465 training faces (10 minibatches of 50, the last of 15; the rest held out for
# test, scored once) with no figures or bound curve (neither is compared): few steps, with the
# groups, accumulation windows and short last minibatch of a full epoch.
SHORT = ["data.batch_size=50", "data.val_size=100", "data.test_size=1400",
         "data.eval_batch_size=500", "~callbacks.figures", "~callbacks.bound_curve"]
TRAIN = 465


@pytest.mark.parametrize("n, batch_size, group", [(1565, 100, 3), (100, 7, 4), (10, 5, 8)])
def test_grouped_sampler_serves_the_same_minibatches_in_lists(n, batch_size, group):
    single = ShardedBatchSampler(n, batch_size, True, seed=1)
    grouped = ShardedBatchSampler(n, batch_size, True, seed=1, group=group)
    lists = list(grouped)
    assert all(isinstance(item, list) and 1 <= len(item) <= group for item in lists)
    assert all(len(item) == group for item in lists[:-1])
    assert len(lists) == len(grouped) == -(-len(single) // group)
    flat = [minibatch for item in lists for minibatch in item]
    assert len(flat) == len(single)
    for ours, theirs in zip(flat, single, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("objective", ["elbo", "wake_sleep"])
def test_k_steps_per_batch_give_the_run_of_one_step_per_batch(tmp_path, objective):
    """Same data, order, binarization and noise: the same parameters, metrics and step count,
    bit for bit on CPU (SHORT: 10 minibatches per epoch, so groups of 3 end with one of 1)."""
    runs = {}
    for k in (1, 3):
        cfg = compose_train([*SMALL, *SHORT, f"model/objective={objective}", "trainer.max_epochs=2",
                             "logger=csv", "trainer.log_every_n_steps=2",
                             f"data.steps_per_batch={k}"],
                            tmp_path / str(k))
        results = train(cfg)
        state = read_checkpoint(tmp_path / str(k) / "checkpoints" / "last.ckpt")
        with open(tmp_path / str(k) / "csv" / "metrics.csv") as f:
            losses = [row["train/loss"] for row in csv.DictReader(f) if row.get("train/loss")]
        runs[k] = results, state, losses
    (one, one_state, one_losses), (three, three_state, three_losses) = runs[1], runs[3]
    assert one["steps"] == three["steps"] == 20 == three_state["global_step"]
    assert three["train_samples_seen"] == one["train_samples_seen"] == 2 * TRAIN
    for key in ("train/elbo", "val/elbo", "val/kl", "test/elbo", "test/recon", "test/kl"):
        assert three[key] == one[key], key
    for name, value in one_state["state_dict"].items():
        assert torch.equal(three_state["state_dict"][name], value), name
    # train/loss reaches the logger: every 2 steps with K = 1, every 2 batches (6 steps) with 3.
    assert len(one_losses) == 10 and len(three_losses) == 4


def test_max_steps_stops_within_a_batch(tmp_path):
    cfg = compose_train([*SMALL, "logger=none", "trainer.max_steps=7",
                         "data.steps_per_batch=3", "~callbacks.bound_curve"], tmp_path)
    results = train(cfg)
    assert (results["steps"], results["train_samples_seen"]) == (7, 700)


HALVING = ["+model.schedule._target_=vae_lightning.schedules.StagedDecay",
           "+model.schedule.base=1", "+model.schedule.decay=0.5"]  # lr x 0.5 each epoch


def _lr_after(tmp_path, name: str, overrides: list[str]) -> tuple[float, dict]:
    cfg = compose_train([*SMALL, *SHORT, "logger=none", "trainer.max_epochs=3", *HALVING,
                         *overrides],
                        tmp_path / name)
    train(cfg)
    state = read_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")
    return state["optimizer_states"][0]["param_groups"][0]["lr"], state


def test_a_schedule_is_stepped_by_epoch_under_manual_optimization(tmp_path):
    """Lightning steps no scheduler under manual optimization: the model steps the epoch
    schedule itself, at the same point, so K = 3 trains with K = 1's learning rates (three
    halvings in three epochs) and the same parameters, bit for bit; an objective with updates
    of its own (FactorVAE, manual at K = 1) follows the schedule as well."""
    one, one_state = _lr_after(tmp_path, "one", [])
    three, three_state = _lr_after(tmp_path, "three", ["data.steps_per_batch=3"])
    assert one == three == pytest.approx(1e-3 * 0.5 ** 3)
    assert three_state["lr_schedulers"][0]["last_epoch"] == 3
    for name, value in one_state["state_dict"].items():
        assert torch.equal(three_state["state_dict"][name], value), name
    factor, _ = _lr_after(tmp_path, "factor", ["model/objective=factor_vae",
                                                "model.objective.hidden=[8]"])
    assert factor == pytest.approx(1e-3 * 0.5 ** 3)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_works_under_manual_optimization(tmp_path, algorithm):
    """trainer.gradient_clip_val, which Lightning refuses for a model that optimizes by hand,
    clips K = 3's steps as Lightning clips K = 1's, bit for bit, and changes the run (the
    threshold is well below the gradients' size); FactorVAE's model steps are clipped too."""
    clip = ["trainer.gradient_clip_val=0.05", f"trainer.gradient_clip_algorithm={algorithm}"]
    states = {}
    for name, extra in (("one", clip), ("three", [*clip, "data.steps_per_batch=3"]),
                        ("free", ["data.steps_per_batch=3"])):
        cfg = compose_train([*SMALL, *SHORT, "logger=none", "trainer.max_epochs=1", *extra],
                            tmp_path / name)
        train(cfg)
        states[name] = read_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")["state_dict"]
    assert any(not torch.equal(states["free"][k], v) for k, v in states["one"].items())
    for name, value in states["one"].items():
        assert torch.equal(states["three"][name], value), name
    factor = {}
    for name, extra in (("clipped", clip), ("free", [])):
        cfg = compose_train([*SMALL, *SHORT, "logger=none", "trainer.max_steps=5",
                             "model/objective=factor_vae", "model.objective.hidden=[8]", *extra],
                            tmp_path / f"factor_{name}")
        train(cfg)
        factor[name] = read_checkpoint(tmp_path / f"factor_{name}" / "checkpoints"
                                       / "last.ckpt")["state_dict"]
    encoder = [k for k in factor["free"] if k.startswith("encoder.")]
    assert any(not torch.equal(factor["clipped"][k], factor["free"][k]) for k in encoder)


def test_gradient_accumulation_works_under_manual_optimization(tmp_path):
    """trainer.accumulate_grad_batches=3, which Lightning refuses for manual steps: K = 3 and
    K = 5 accumulate as Lightning does for K = 1 (loss / 3 per minibatch, a step every 3
    minibatches and at the epoch's end: SHORT's 10 minibatches give 4 steps an epoch, K = 5's
    windows crossing its groups), bit for bit; it is refused, before training, with an
    objective's own updates."""
    states = {}
    for k in (1, 3, 5):
        cfg = compose_train([*SMALL, *SHORT, "logger=none", "trainer.max_epochs=2",
                             "trainer.accumulate_grad_batches=3", f"data.steps_per_batch={k}"],
                            tmp_path / str(k))
        results = train(cfg)
        assert results["steps"] == 8 and results["train_samples_seen"] == 2 * TRAIN
        states[k] = read_checkpoint(tmp_path / str(k) / "checkpoints" / "last.ckpt")
    for k in (3, 5):
        assert states[k]["global_step"] == 8
        for name, value in states[1]["state_dict"].items():
            assert torch.equal(states[k]["state_dict"][name], value), (k, name)
    cfg = compose_train([*SMALL, "model/objective=factor_vae", "model.objective.hidden=[8]",
                         "trainer.accumulate_grad_batches=2"], tmp_path / "factor")
    with pytest.raises(ConfigError, match="accumulate_grad_batches=2 cannot be used with an "
                                          "objective with updates of its own"):
        train(cfg)


@pytest.mark.parametrize("k", [1, 2])
def test_gradient_clipping_in_mixed_precision_trains_with_the_fused_optimizer_asked_for(tmp_path,
                                                                                        k):
    """trainer.precision=bf16-mixed with trainer.gradient_clip_val (model.optimizer.fused=true,
    the default) was a RuntimeError from Lightning at the first step ("Adam does not allow for
    gradient clipping because it performs unscaling of gradients internally"), the run
    directory made; with data.steps_per_batch > 1 (ManualClipping) too. The optimizer now takes
    its default (foreach) update there, as where torch has no fused one (optimization.on_device)."""
    cfg = compose_train([*SMALL, *SHORT, "trainer.max_steps=2", "logger=none",
                         "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5",
                         f"data.steps_per_batch={k}"], tmp_path)
    results = train(cfg)
    assert results["steps"] == 2
    state = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert state["optimizer_states"][0]["param_groups"][0]["fused"] is False
