"""The cheaper per-step work of the training path gives what the plain operations give: batch rows,
binarization draws, the batch Lightning hands to the step, the module's attributes."""

import warnings

import lightning as L
import numpy as np
import pytest
import torch
from models import small_vae
from torch import nn

from vae_lightning.data import MNISTDataModule
from vae_lightning.data.idx import write_idx
from vae_lightning.data.sampling import TensorBatchDataset, derive_seed


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32, torch.int64])
def test_a_batch_holds_the_rows_of_its_indices(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(50, 2, 3, generator=g) * 200).to(dtype)
    y = torch.arange(50)
    idx = torch.tensor([7, 3, 3, 49, 0])
    bx, by = TensorBatchDataset(x, y)[idx]
    assert torch.equal(bx, x[idx]) and torch.equal(by, y[idx])
    assert [b[0].shape for b in TensorBatchDataset(x, y)[[idx, idx[:2]]]] == [(5, 2, 3), (2, 2, 3)]


@pytest.mark.parametrize("pixels", ["uint8", "float"])
def test_dynamic_binarization_is_the_draw_u_below_x(pixels):
    """The float 0/1 batch equals (u < x).float() for the same draws u of the data module's
    generator: uniform integers below 255 for uint8 pixels, uniform floats for float pixels."""
    dm = MNISTDataModule(binarize="dynamic", seed=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 28, 28), generator=g, dtype=torch.uint8)
    if pixels == "float":
        x = x.float().div(255).unsqueeze(1)
    out, _ = dm.to_inputs((x, torch.zeros(6)))
    gen = torch.Generator().manual_seed(derive_seed(3, 0))
    shape = (6, 1, 28, 28)
    if pixels == "uint8":
        u = torch.randint(255, shape, generator=gen, dtype=torch.uint8)
        expected = (u < x.reshape(shape)).float()
    else:
        expected = (torch.rand(shape, generator=gen) < x).float()
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert 0 < out.mean() < 1


def test_a_batch_on_the_device_is_handed_on_as_it_is_and_others_are_moved():
    dm = MNISTDataModule()
    cpu = torch.device("cpu")
    batch = (torch.zeros(2, 1, 3, 4), torch.zeros(2))
    assert dm.transfer_batch_to_device(batch, cpu, 0) is batch
    grouped = [batch, batch]
    assert dm.transfer_batch_to_device(grouped, cpu, 0) is grouped
    moved = dm.transfer_batch_to_device(grouped, torch.device("meta"), 0)
    assert all(t.device.type == "meta" for minibatch in moved for t in minibatch)
    other = {"x": torch.zeros(1)}  # no list or tuple of tensors: Lightning's own move
    assert torch.equal(dm.transfer_batch_to_device(other, cpu, 0)["x"], other["x"])


def test_training_with_our_data_module_warns_of_no_overridden_hook(tmp_path):
    """The batch hooks are the data module's alone: Lightning warns when the model overrides
    one that a data module passed with it also has, or that it ignores for the data module's."""
    root = tmp_path / "mnist"
    root.mkdir()
    g = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", g.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", g.integers(0, 10, n).astype(np.uint8))
    dm = MNISTDataModule(root=tmp_path, download=False, val_size=10, batch_size=10)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, limit_val_batches=1,
                        default_root_dir=tmp_path)
    model = small_vae((1, 28, 28))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    hooks = [str(w.message) for w in caught if "overridden" in str(w.message)]
    assert not hooks, hooks


def test_per_step_attributes_are_plain_and_parts_still_register():
    model = small_vae()
    model.samples_seen = 7
    model._current_fx_name = "training_step"
    assert (model.samples_seen, model._current_fx_name) == (7, "training_step")
    assert "samples_seen" not in model.state_dict()
    model.extra = nn.Linear(1, 1)  # any other attribute: nn.Module's rules
    assert "extra.weight" in model.state_dict()


def test_no_profiler_by_default_and_a_chosen_one_is_kept():
    """Without a profiler the trainer runs none, through one shared empty context per hook call;
    a profiler the config names (debug=profiler: simple) is Lightning's own."""
    from lightning.pytorch.profilers import SimpleProfiler

    from vae_lightning.trainer import NoProfiler, Trainer

    quiet = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert isinstance(quiet.profiler, NoProfiler)
    with quiet.profiler.profile("a") as first, quiet.profiler.profile("b") as second:
        assert first is None and second is None
    assert quiet.profiler.profile("a") is quiet.profiler.profile("b")
    chosen = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                     profiler="simple")
    assert isinstance(chosen.profiler, SimpleProfiler)
