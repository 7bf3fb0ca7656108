"""The IWAE paper's learning-rate schedule, and a schedule through the config and on resume."""

import pytest
import torch
from compose import compose_train
from models import small_vae

from vae_lightning.schedules import StagedDecay
from vae_lightning.train import build_run


def test_stages_last_three_to_the_i_epochs_at_decayed_rates():
    schedule = StagedDecay()
    stages = [schedule.stage(epoch) for epoch in range(3280)]
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]  # 3280 epochs
    assert schedule.stage(3280) == 8
    assert schedule(0) == 1.0 and schedule(1) == pytest.approx(10 ** (-1 / 7))
    assert schedule(3279) == pytest.approx(10 ** (-1))  # 1e-3 * 10^(-7/7) = 1e-4


def test_the_model_steps_its_schedule_each_epoch():
    model = small_vae(schedule=StagedDecay(base=2, decay=0.5))
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert rates == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])  # stages of 1, 2, 4 epochs


def test_the_authors_rounded_rates():
    """yburda/iwae: 1e-4 * round(10^(1 - i/7), 1) for stage i, as factors of 1e-3."""
    factors = [round(10 ** (1 - i / 7), 1) / 10 for i in range(8)]
    schedule = StagedDecay(factors=factors)
    assert factors == pytest.approx([1.0, 0.72, 0.52, 0.37, 0.27, 0.19, 0.14, 0.1])
    assert [schedule(epoch) for epoch in (0, 1, 3, 4, 12, 13, 3279, 5000)] == pytest.approx([
        1.0, 0.72, 0.72, 0.52, 0.52, 0.37, 0.1, 0.1])


def test_the_iwae_preset(tmp_path):
    """Burda et al.'s code: Glorot-uniform weights, zero biases, all 60,000 training images,
    Adam as the code sets it, the rounded schedule, the final model reported."""
    cfg = compose_train(["experiment=iwae_mnist"], tmp_path)
    model = build_run(cfg).model
    assert model.latent == 50 and model.objective.k == 5
    assert model.objective.checkpoint == "last"
    linear = [m for m in model.encoder.net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [200, 200, 100]
    for layer in linear + [m for m in model.decoder.net if isinstance(m, torch.nn.Linear)]:
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert torch.all(layer.bias == 0) and layer.weight.abs().max() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    optimizer = model.configure_optimizers()["optimizer"]
    assert optimizer.defaults["eps"] == 5e-6 and optimizer.defaults["betas"] == (0.99, 0.999)
    assert cfg.data.batch_size == 20 and cfg.data.val_size == 0
    assert cfg.trainer.max_epochs == 3280
    assert cfg.callbacks.output_bias._target_ == "vae_lightning.callbacks.OutputBias"
    assert model.schedule(3279) == 0.1


def test_a_new_base_rate_on_resume_keeps_the_schedule_s_factor():
    model = small_vae(schedule=StagedDecay())
    config = model.configure_optimizers()
    config["optimizer"].step()
    config["lr_scheduler"]["scheduler"].step()  # epoch 1: stage 1
    checkpoint = {"optimizer_states": [config["optimizer"].state_dict()],
                  "lr_schedulers": [config["lr_scheduler"]["scheduler"].state_dict()]}
    resumed = small_vae(schedule=StagedDecay(), optimizer=lambda p: torch.optim.Adam(p, lr=5e-4))
    resumed.on_load_checkpoint(checkpoint)
    group = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert group["initial_lr"] == 5e-4 and group["lr"] == pytest.approx(5e-4 * 10 ** (-1 / 7))
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == [5e-4]
