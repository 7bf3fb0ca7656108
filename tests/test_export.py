"""vae-export: a trained model without its training state. The file holds the source's weights
bit for bit and evaluates, samples and loads to the same numbers with the same seed, in under
half the bytes (Adam's two moments per weight are left out); it is refused as a run to resume;
a source that would not load (a class outside the package) is not exported, and an existing
file is not overwritten without --force."""

import json

import pytest
import torch
from compose import compose_train, mnist_like

from vae_lightning import export
from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.errors import CheckpointError
from vae_lightning.evaluate import Evaluation
from vae_lightning.module import VAE
from vae_lightning.samplers import digest
from vae_lightning.train import train

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures=null", "callbacks.bound_curve=null"]


def tiny(root):
    return ["data=mnist", f"data.root={root}", "data.val_size=50"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 40-step run on small MNIST-format files."""
    root = mnist_like(tmp_path_factory.mktemp("data"))
    directory = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    train(compose_train([*tiny(root), "trainer.max_steps=40", *QUIET], directory))
    return directory, root


def test_the_export_holds_the_model_and_gives_the_same_numbers(run, tmp_path, capsys):
    directory, root = run
    source = directory / "checkpoints" / "last.ckpt"
    out = tmp_path / "model.ckpt"
    assert export.main([str(directory), str(out)]) == 0  # a run directory: its last.ckpt
    assert "not resumed" in capsys.readouterr().out
    full, small = read_checkpoint(source), read_checkpoint(out)
    assert set(small) == {*export.KEPT, export.EXPORT_KEY} & ({*full} | {export.EXPORT_KEY})
    assert "optimizer_states" in full and "callbacks" in full
    assert out.stat().st_size < 0.5 * source.stat().st_size  # Adam's moments: 2x the weights
    for name, tensor in full["state_dict"].items():
        assert torch.equal(small["state_dict"][name], tensor), name
    record = small[export.EXPORT_KEY]
    assert record["sha256"] == digest(source)
    assert (record["epoch"], record["global_step"], record["samples_seen"]) == (
        full["epoch"], full["global_step"], full["samples_seen"])
    # Evaluated with the same seed on the same points: the same estimates, point for point.
    found = {}
    for name, path in (("full", source), ("small", out)):
        Evaluation(k=4, device="cpu", limit=20, data_root=str(root))(
            str(path), 0, str(tmp_path / name))
        found[name] = json.loads((tmp_path / name / "eval.json").read_text())
    for key in ("iw", "elbo", "per_point", "points", "active_units", "train_samples_seen"):
        assert found["small"][key] == found["full"][key], key
    # Loaded in Python: the same samples from the same generator state.
    draws = []
    for path in (source, out):
        model = VAE.load_from_checkpoint(str(path))
        torch.manual_seed(1)
        draws.append(model.sample(5))
    assert torch.equal(*draws)


def test_an_export_is_not_a_run_to_resume(run, tmp_path):
    directory, root = run
    out = tmp_path / "model.ckpt"
    export.export(directory / "checkpoints" / "last.ckpt", out)
    with pytest.raises(CheckpointError, match="vae-export"):
        train(compose_train([*tiny(root), "trainer.max_steps=60", f"ckpt_path={out}", *QUIET],
                            tmp_path / "resumed"))


def test_refusals_leave_files_as_they_were(run, tmp_path, capsys):
    directory, _ = run
    source = directory / "checkpoints" / "last.ckpt"
    before = source.read_bytes()
    out = tmp_path / "model.ckpt"
    out.write_bytes(b"mine")
    cases = [([str(source), str(out)], "--force"),  # an existing file is not overwritten
             ([str(source), str(source)], "is the checkpoint being exported"),
             ([str(source), str(tmp_path / "model.pt")], "suffix .ckpt"),
             ([str(tmp_path), str(tmp_path / "a.ckpt")], "without checkpoints/last.ckpt"),
             ([str(directory / "results.json"), str(tmp_path / "b.ckpt")], "not a checkpoint"),
             ([str(source), str(tmp_path / "no" / "c.ckpt")], "does not exist")]
    for argv, words in cases:
        assert export.main(argv) == 2, argv
        assert words in capsys.readouterr().err, argv
    assert out.read_bytes() == b"mine" and source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]
    assert export.main([str(source), str(out), "--force"]) == 0
    assert read_checkpoint(out)[export.EXPORT_KEY]["sha256"] == digest(source)


def test_a_source_that_names_code_outside_the_package_is_not_exported(run, tmp_path, capsys):
    directory, _ = run
    checkpoint = read_checkpoint(directory / "checkpoints" / "last.ckpt")
    checkpoint["run_config"]["model"]["_target_"] = "os.system"
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    assert export.main([str(crafted), str(tmp_path / "out.ckpt")]) == 2
    assert "os.system" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()


def test_a_model_of_your_own_classes_is_exported_when_you_trust_them(run, tmp_path, capsys):
    """A run whose prior is a class of one's own (tests/models.py) is refused as any checkpoint
    naming code outside the package is, the refusal naming vae-export's --trusted; exported
    with it, the file loads (trusting the same name) to the same weights."""
    directory, _ = run
    checkpoint = read_checkpoint(directory / "checkpoints" / "last.ckpt")
    checkpoint["run_config"]["model"]["prior"]["_target_"] = "models.NamedPrior"
    mine = tmp_path / "mine.ckpt"
    torch.save(checkpoint, mine)
    out = tmp_path / "out.ckpt"
    assert export.main([str(mine), str(out)]) == 2
    assert "--trusted models.NamedPrior with vae-export" in capsys.readouterr().err
    assert not out.exists()
    assert export.main([str(mine), str(out), "--trusted", "models.NamedPrior"]) == 0
    loaded = VAE.load_from_checkpoint(str(out), trusted=["models.NamedPrior"])
    assert type(loaded.prior).__name__ == "NamedPrior"
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
