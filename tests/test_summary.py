"""The model summary counts the FLOPs of the bound on one data point (Lightning's printed 0 for a
model without ``forward``): each affine layer's 2 x in x out multiply-adds, per layer and in
total, without changing the random numbers training draws or the modules' modes; and
``trainer.enable_model_summary=false`` leaves out every summary."""

import compose
import pytest
import torch
from compose import CONF, PAIR_MODEL, compose_train, small_posterior, small_prior
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy

from vae_lightning.callbacks import summary
from vae_lightning.train import build_run
from vae_lightning.trainer import Trainer


class _Trainer:
    """What the summary reads of a trainer: its data module, strategy and precision plugin."""

    def __init__(self, datamodule) -> None:
        self.datamodule, self.precision_plugin = datamodule, Precision()
        self.strategy = SingleDeviceStrategy("cpu")


def _affine_flops(module: torch.nn.Module) -> int:
    return sum(2 * m.in_features * m.out_features for m in module.modules()
               if isinstance(m, torch.nn.Linear))


def _counted(overrides, tmp_path, latent=3):
    run = build_run(compose_train(["data=frey", f"model.latent={latent}", *overrides], tmp_path))
    run.datamodule.setup("fit")
    model = run.model
    model.decoder.eval()  # a mode the count must restore as it found it
    rng, modes = torch.get_rng_state(), {m: m.training for m in model.modules()}
    table = summary.ModelSummary(max_depth=1)._summary(_Trainer(run.datamodule), model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {m: m.training for m in model.modules()} == modes
    return model, table


def test_flops_are_the_affine_layers_of_one_bound(tmp_path):
    model, table = _counted([], tmp_path)
    # The bound on one point runs each layer once (one draw of z): 2 x in x out per layer.
    assert table.total_flops == _affine_flops(model) > 0
    by_layer = {name: sum(counts.values()) for name, counts in table.flop_counts.items()}
    assert by_layer["encoder"] == _affine_flops(model.encoder)
    assert by_layer["decoder"] == _affine_flops(model.decoder)


def test_samples_of_z_multiply_the_decoder(tmp_path):
    model, table = _counted(["model.objective.n_samples=5"], tmp_path)  # L = 5 (eq. 7)
    by_layer = {name: sum(counts.values()) for name, counts in table.flop_counts.items()}
    assert by_layer["encoder"] == _affine_flops(model.encoder)
    assert by_layer["decoder"] == 5 * _affine_flops(model.decoder)


def test_conditional_model_is_given_a_label(tmp_path):
    mnist = compose.mnist_like(tmp_path / "data")
    model, table = _counted([f"data.root={mnist}", "data=mnist", "data.val_size=50",
                             "model=cvae"], tmp_path)
    assert table.total_flops >= _affine_flops(model) > 0


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / "model" / group).glob("*.yaml"))


@pytest.mark.parametrize("option", [f"prior={o}" for o in _options("prior")]
                         + [f"posterior={o}" for o in _options("posterior")])
def test_every_prior_and_posterior_is_counted_with_its_gradients_kept(option, tmp_path):
    """Each option's bound runs under the counter (the VampPrior's pseudo-inputs, a parameter
    fed to the encoder, once made torch's module tracker fail: every run of model/prior=vamp
    ended in a traceback before its first step), and every parameter trains afterwards."""
    group, name = option.split("=")
    overrides = (small_prior(name) if group == "prior" else small_posterior(name))
    if name in PAIR_MODEL and f"model={PAIR_MODEL[name]}" not in overrides:
        overrides = [f"model={PAIR_MODEL[name]}", *overrides]
    if name in ("uniform_codes", "uniform_categorical"):  # with their only posteriors
        overrides = small_posterior({"uniform_codes": "vq"}.get(name, "relaxed_categorical"))
    if name == "ladder":
        overrides = [*overrides, "model.prior.net.hidden=[4]"]
    if name == "class_normal":
        mnist = compose.mnist_like(tmp_path / "data")
        overrides = [f"data.root={mnist}", "data=mnist", "data.val_size=50", "model=cvae",
                     *overrides]
    model, table = _counted(overrides, tmp_path, latent=2)  # the small options' latent space
    assert table.total_flops > 0
    assert all(p.requires_grad for p in model.parameters())


def test_enable_model_summary_false_leaves_out_every_summary():
    given = summary.RichModelSummary()
    quiet = Trainer(enable_model_summary=False, callbacks=[given], logger=False,
                    enable_progress_bar=False, enable_checkpointing=False)
    assert not any(isinstance(c, ModelSummary) for c in quiet.callbacks)
    default = Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    assert [type(c).__module__ for c in default.callbacks if isinstance(c, ModelSummary)] == [
        summary.__name__]


def test_enable_progress_bar_false_leaves_out_a_progress_bar_among_the_callbacks():
    """callbacks=rich with the bar off (debug=fast_dev_run sets it off) was refused with
    Lightning's "Trainer was configured with enable_progress_bar=False but found
    RichProgressBar"; the bar's setting now leaves it out, as the summary's does."""
    from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

    quiet = Trainer(callbacks=[RichProgressBar()], logger=False, enable_progress_bar=False,
                    enable_checkpointing=False)
    assert not any(isinstance(c, ProgressBar) for c in quiet.callbacks)
    shown = Trainer(callbacks=[RichProgressBar()], logger=False, enable_checkpointing=False)
    assert [type(c) for c in shown.callbacks if isinstance(c, ProgressBar)] == [RichProgressBar]
