"""The graphed step (model.cuda_graph=true) off CUDA, where it runs eagerly: the same run as the
standard step, bit for bit, with the non-finite check read back every few steps and the update
of a bad step skipped on the device; and what it refuses."""

import pytest
import torch
from compose import compose_train

from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.errors import ConfigError, NonFiniteLossError
from vae_lightning.train import build_run, train

SMALL = ["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
         "model.decoder.net.hidden=[32]", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "callbacks.figures.n_points=0", "logger=none"]
METRICS = ("train/elbo", "val/elbo", "val/kl", "test/elbo", "test/recon", "test/kl")


@pytest.mark.parametrize("objective, steps_per_batch", [("elbo", 1), ("elbo", 3),
                                                        ("wake_sleep", 1), ("iwae", 2)])
def test_graphed_steps_give_the_run_of_the_standard_step(objective, steps_per_batch, tmp_path):
    runs = {}
    for graphed in (False, True):
        cfg = compose_train([*SMALL, f"model/objective={objective}", "trainer.max_epochs=2",
                             f"data.steps_per_batch={steps_per_batch}",
                             f"model.cuda_graph={str(graphed).lower()}"],
                            tmp_path / str(graphed))
        results = train(cfg)
        state = read_checkpoint(tmp_path / str(graphed) / "checkpoints" / "last.ckpt")
        runs[graphed] = results, state
    (plain, plain_state), (graphed, graphed_state) = runs[False], runs[True]
    assert graphed["steps"] == plain["steps"] == 32
    assert graphed["train_samples_seen"] == plain["train_samples_seen"]
    for key in METRICS:
        assert graphed[key] == plain[key], key
    for name, value in plain_state["state_dict"].items():
        assert torch.equal(graphed_state["state_dict"][name], value), name


def test_a_non_finite_loss_is_found_later_with_the_last_good_state_kept(tmp_path):
    """The NaN at step 5 is read back at step 9 (log_every_n_steps = 10); the updates of steps 5 to
    9 were skipped on the device, so the saved state is the state before step 5."""
    nan = ["+callbacks.nan._target_=fault_injection.NaNInputAtStep", "+callbacks.nan.step=5",
           "trainer.max_epochs=2", "trainer.log_every_n_steps=10"]
    cfg = compose_train([*SMALL, *nan], tmp_path / "plain")
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        train(cfg)
    cfg = compose_train([*SMALL, *nan, "model.cuda_graph=true"], tmp_path / "graphed")
    with pytest.raises(NonFiniteLossError, match="between step 0 and step 9") as err:
        train(cfg)
    assert "nonfinite-step9.ckpt" in str(err.value) and "skipped" in str(err.value)
    before = read_checkpoint(tmp_path / "plain" / "checkpoints" / "nonfinite-step5.ckpt")
    after = read_checkpoint(tmp_path / "graphed" / "checkpoints" / "nonfinite-step9.ckpt")
    for name, value in before["state_dict"].items():
        assert torch.equal(after["state_dict"][name], value), name


@pytest.mark.parametrize("overrides, words", [
    (["model.optimizer.fused=false"], ["cuda_graph", "fused"]),
    (["model.objective.warmup_steps=100"], ["cuda_graph", "warm-up"]),
    (["model=svae"], ["cuda_graph", "rejection sampler"]),
])
def test_what_a_graphed_step_cannot_do_is_refused_before_training(overrides, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        build_run(compose_train([*SMALL, "model.cuda_graph=true", *overrides], tmp_path))
    for word in words:
        assert word in str(err.value)
