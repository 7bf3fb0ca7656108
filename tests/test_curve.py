"""Fig. 2's curve during training (BoundCurve), training length in samples (trainer.max_samples)
and the evaluation data they read."""

import json

import numpy as np
import pytest
import torch
from compose import compose_train

from vae_lightning.callbacks import BoundCurve, SampleBudget
from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.data import FreyFaceDataModule, MNISTDataModule
from vae_lightning.data.idx import write_idx
from vae_lightning.data.sampling import derive_seed
from vae_lightning.data.splits import SPLIT_SEED
from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.rebuild import load_model
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "logger=none", "callbacks.figures=null"]


def _frey(tmp_path, *overrides):
    return compose_train(["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
                          "model.decoder.net.hidden=[32]", *QUIET, *overrides], tmp_path)


# With 4 steps per batch the run stops within a batch: at the same step. The case
# (5e3, 52, 5095) with one step per batch is the run of
# test_curve_points_are_log_spaced_in_samples_seen_and_end_with_training.
@pytest.mark.parametrize("max_samples, steps, seen, steps_per_batch", [
    (max_samples, steps, seen, steps_per_batch)
    for max_samples, steps, seen in [
        (1000, 10, 1000),  # 10 full batches
        (1600, 17, 1665),  # the epoch's last batch holds 65 faces: the step passing 1600 ends it
        (5e3, 52, 5095),  # a float, as `trainer.max_samples=5e3` gives; over 3 epochs
    ]
    for steps_per_batch in (1, 4) if (max_samples, steps_per_batch) != (5e3, 1)
])
def test_max_samples_stops_at_the_step_that_reaches_it(tmp_path, max_samples, steps, seen,
                                                       steps_per_batch):
    cfg = _frey(tmp_path, f"trainer.max_samples={max_samples}",
                f"data.steps_per_batch={steps_per_batch}", "~callbacks.bound_curve")
    results = train(cfg)
    assert (results["steps"], results["train_samples_seen"]) == (steps, seen)


def test_last_checkpoint_is_the_final_state_whatever_the_validation_interval(tmp_path):
    cfg = _frey(tmp_path, "trainer.max_samples=3500", "trainer.check_val_every_n_epoch=100",
                "~callbacks.bound_curve")
    results = train(cfg)
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["samples_seen"] == results["train_samples_seen"] == 3530
    assert last["global_step"] == results["steps"] == 36


def test_curve_points_are_log_spaced_in_samples_seen_and_end_with_training(tmp_path,
                                                                          monkeypatch):
    # trainer.max_samples=5e3 (a float): the last case of
    # test_max_samples_stops_at_the_step_that_reaches_it with one step per batch.
    from vae_lightning.callbacks import figures

    drawn = []
    monkeypatch.setattr(figures, "curves_figure", lambda *args: drawn.append(args)
                        or figures.pyplot().figure())
    cfg = compose_train(["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
                         "model.decoder.net.hidden=[32]", *QUIET[:3], "trainer.max_samples=5e3",
                         "callbacks.bound_curve.points_per_decade=2",
                         "callbacks.bound_curve.start=1000", "callbacks.figures.n_points=0"],
                        tmp_path)  # with the figures callback
    results = train(cfg)
    assert (results["steps"], results["train_samples_seen"]) == (52, 5095)
    curve = json.loads((tmp_path / "curve.json").read_text())
    # 1000 and 10^3.5 = 3162 are reached at steps 10 and 33 (3230 samples), then training ends.
    assert [p["samples_seen"] for p in curve["points"]] == [1000, 3230, 5095]
    assert (curve["data"], curve["latent"], curve["method"]) == ("frey", 2, "aevb")
    assert (curve["train_size"], curve["test_size"]) == (1565, 200)
    assert curve["config"]["data"]["_target_"].endswith("FreyFaceDataModule")
    # The last point is the ELBO of the final weights on the whole splits, z drawn from seed 0
    # in chunks of batch_size.
    model, _, _ = load_model(tmp_path / "checkpoints" / "last.ckpt", VAE)
    dm = FreyFaceDataModule(scale=255.0)
    dm.setup()
    torch.manual_seed(0)
    with torch.no_grad():
        expected = {split: torch.cat([model.bound(chunk).elbo for chunk in
                                      dm.evaluation_data(split).split(1000)]).double().mean()
                    for split in ("train", "test")}
    for split, value in expected.items():
        assert curve["points"][-1][f"{split}/elbo"] == pytest.approx(value.item(), rel=1e-6)
    # curves.png draws these points beside the epochs' (a run of under 4 epochs had 4 dots).
    (epochs, spaced), = drawn
    assert spaced == {
        f"{name} data, {size:,} points, at log-spaced counts (curve.json)":
            [(p["samples_seen"], p[f"{split}/elbo"]) for p in curve["points"]]
        for split, name, size in [("train", "training", 1565), ("test", "test", 200)]}


def test_curve_leaves_the_training_random_stream_alone(tmp_path):
    with_curve = train(_frey(tmp_path / "a", "trainer.max_samples=3000",
                             "callbacks.bound_curve.start=100"))
    without = train(_frey(tmp_path / "b", "trainer.max_samples=3000", "~callbacks.bound_curve"))
    assert len(json.loads((tmp_path / "a" / "curve.json").read_text())["points"]) == 9
    a = load_model(tmp_path / "a" / "checkpoints" / "last.ckpt", VAE)[0].state_dict()
    b = load_model(tmp_path / "b" / "checkpoints" / "last.ckpt", VAE)[0].state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert with_curve["test/elbo"] == without["test/elbo"]


def test_curve_state_survives_a_checkpoint():
    curve = BoundCurve(points_per_decade=4, start=1e3)
    curve.points = [{"samples_seen": 1000, "train/elbo": 1.0, "test/elbo": 0.5}]
    curve._next = 13
    restored = BoundCurve(points_per_decade=4)
    restored.load_state_dict(curve.state_dict())
    assert restored.points == curve.points
    assert restored.threshold(restored._next) == pytest.approx(10 ** 3.25)
    finer = BoundCurve(points_per_decade=5)  # the first point of its schedule after 10^3.25
    finer.load_state_dict(curve.state_dict())
    assert finer.threshold(finer._next) == pytest.approx(10 ** 3.4)


@pytest.mark.parametrize("kwargs, word", [
    ({"points_per_decade": 0}, "points_per_decade=0"),
    ({"start": 0.5}, "start=0.5"),
    ({"splits": ["train", "holdout"]}, "holdout"),
    ({"splits": []}, "splits=\\[\\]"),
])
def test_curve_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        BoundCurve(**kwargs)


@pytest.mark.parametrize("value", [0, -5, True, "many"])
def test_bad_max_samples_is_a_config_error(tmp_path, value):
    with pytest.raises((ConfigError, ValueError), match="max_samples"):
        build_run(_frey(tmp_path, f"trainer.max_samples={value}"))
    with pytest.raises(ValueError, match="max_samples"):
        SampleBudget(value)


def test_evaluation_data_is_one_fixed_binarization_of_the_split(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "mnist").mkdir()
    for prefix, n in [("train", 300), ("t10k", 100)]:
        write_idx(tmp_path / "mnist" / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(tmp_path / "mnist" / f"{prefix}-labels-idx1-ubyte",
                  rng.integers(0, 10, n).astype(np.uint8))
    dm = MNISTDataModule(root=tmp_path, val_size=50, download=False)
    dm.setup()
    train_x = dm.evaluation_data("train")
    assert train_x.shape == (250, 1, 28, 28) and set(train_x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(train_x, dm.evaluation_data("train"))  # the same draw every time
    pixels = dm.splits["train"][0][:, None].float() / 255
    assert abs(train_x.mean() - pixels.mean()) < 0.01  # a Bernoulli draw of the intensities
    # val and test are the draws the validation and test loops see.
    test_batches = [dm.to_inputs(b)[0] for b in dm.test_dataloader()]
    assert torch.equal(dm.evaluation_data("test"), torch.cat(test_batches))
    grey = MNISTDataModule(root=tmp_path, val_size=50, download=False, binarize="none")
    grey.setup()
    torch.testing.assert_close(grey.evaluation_data("train"), pixels)
    # Drawn batch by batch, the same pixels as one draw over the whole split (the fixed draw
    # of earlier versions, from the split's seed), whatever the batch size and limit.
    gen = torch.Generator().manual_seed(derive_seed(SPLIT_SEED, 0))
    whole = (torch.rand((250, 28, 28), generator=gen) < dm.splits["train"][0] / 255).float()
    assert torch.equal(train_x, whole[:, None])
    labels = dm.evaluation_labels("train")
    for batch_size, limit in [(1, 7), (64, None), (1000, 100)]:
        batches = list(dm.evaluation_batches("train", batch_size, limit=limit))
        assert all(len(x) <= batch_size for x, _ in batches)
        assert torch.equal(torch.cat([x for x, _ in batches]), train_x[:limit])
        assert torch.equal(torch.cat([y for _, y in batches]), labels[:limit])
    assert torch.equal(dm.evaluation_data("train", limit=100), train_x[:100])
    assert dm.evaluation_data("train", limit=0).shape == (0, 1, 28, 28)
    unloaded = MNISTDataModule(root=tmp_path, val_size=50, download=False)
    with pytest.raises(RuntimeError, match="not loaded"):  # not an empty tensor
        unloaded.evaluation_data("test")


def test_curve_and_first_bound_evaluate_a_split_batch_by_batch(tmp_path, monkeypatch):
    """The curve's and the first bound's evaluations never hold a float copy of a whole split
    (dSprites' 737,280 images are 12 GB as floats: its presets were killed for memory after
    their first step): they read ``evaluation_batches``, never ``evaluation_data``."""
    from vae_lightning.data.datamodules import VAEDataModule

    def whole(*args, **kwargs):
        raise AssertionError("a whole split was made into one float tensor")

    monkeypatch.setattr(VAEDataModule, "evaluation_data", whole)
    train(_frey(tmp_path, "trainer.max_samples=300", "data.val_size=0",
                "callbacks.bound_curve.start=100"))
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert curve["train_size"] == 1765 and len(curve["points"]) >= 2


def test_the_mean_image_of_a_large_split_is_summed_in_chunks():
    dm = FreyFaceDataModule(scale=255.0)
    dm.setup()
    x = dm.splits["train"][0]
    dm.splits["train"] = (x.repeat(6, 1, 1), dm.splits["train"][1].repeat(6))  # > 4096 rows
    expected = (x.double().sum(0) / len(x) / 255).float().reshape(dm.shape)
    torch.testing.assert_close(dm.mean_image(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("value", ["'00:00:00:01'", "{seconds: 1}"])
def test_max_time_ends_training_early_and_the_run_ends_as_usual(tmp_path, value):
    """trainer.max_time, in Lightning's "DD:HH:MM:SS" or as a mapping from the config (a
    DictConfig, which Lightning alone would not read), stops training at its first step after
    the time; the run is then evaluated and written as one that reached its length."""
    # 2000 epochs would take minutes: a max_time that were ignored fails, it does not hang.
    cfg = _frey(tmp_path, f"trainer.max_time={value}", "trainer.max_epochs=2000",
                "~callbacks.bound_curve")
    results = train(cfg)
    assert results["status"] == "completed" and results["epochs"] < 2000
    assert np.isfinite(results["test/elbo"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("value", ["soon", "'1:2'", "{weeks: x}", "{fortnights: 1}", "5",
                                   "{hours: inf}", "{hours: nan}", "{days: 1e12}"])
def test_bad_max_time_is_an_error_naming_the_key(tmp_path, value):
    """Each names the key and what is accepted (an infinite or huge mapping gave timedelta's
    words, "cannot convert float infinity to integer", without the key)."""
    with pytest.raises(ConfigError, match=r"trainer.max_time=.* expected a duration"):
        train(_frey(tmp_path, f"trainer.max_time={value}"))


@pytest.mark.parametrize("override, words", [
    ("trainer.accumulate_grad_batches=-1", "accumulate_grad_batches=-1"),  # climbed the loss
    ("trainer.accumulate_grad_batches=0", "accumulate_grad_batches=0"),  # ZeroDivisionError
    ("trainer.gradient_clip_val=-1", "gradient_clip_val=-1"),  # ignored by Lightning
    ("trainer.gradient_clip_val=0", "gradient_clip_val=0"),
    ("trainer.precision=64", "float32, not float64"),  # a dtype error after the first step
    ("trainer.precision=64-true", "float32, not float64"),
    ("trainer.precision=bf16-true", "computes its densities in float32"),  # a dtype error
    ("trainer.precision=16-true", "computes its densities in float32"),
])
def test_trainer_values_lightning_accepts_but_cannot_train_are_refused(tmp_path, override, words):
    """Each was accepted and then trained in the wrong direction, silently did nothing, or
    ended in a traceback; now a ConfigError naming the key before anything is built."""
    with pytest.raises(ConfigError, match=words):
        train(_frey(tmp_path, override))
    assert not (tmp_path / "checkpoints").exists()


def test_max_points_evaluates_a_fixed_subset_of_a_large_split(tmp_path):
    """callbacks.bound_curve.max_points: each point of the curve on the same 500 of Frey
    Face's 1,565 training faces (its 200 test faces in full); their ELBO, z from seed 0."""
    train(_frey(tmp_path, "trainer.max_samples=300", "callbacks.bound_curve.start=100",
                "callbacks.bound_curve.max_points=500"))
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert (curve["train_size"], curve["test_size"]) == (500, 200)
    model, _, _ = load_model(tmp_path / "checkpoints" / "last.ckpt", VAE)
    dm = FreyFaceDataModule(scale=255.0)
    dm.setup()
    points = BoundCurve(max_points=500)._points(len(dm.splits["train"][0]))
    assert len(points) == len(set(points.tolist())) == 500 and bool((points.diff() > 0).all())
    torch.manual_seed(0)
    with torch.no_grad():
        expected = torch.cat([model.bound(x).elbo for x, _ in
                              dm.evaluation_batches("train", 1000, points=points)])
    assert curve["points"][-1]["train/elbo"] == pytest.approx(expected.double().mean().item(),
                                                              rel=1e-6)


def test_the_dsprites_presets_evaluate_their_curve_on_a_subset():
    from compose import compose_train as compose

    for name in ("beta_tc", "capacity", "dip_vae", "factor_vae"):
        cfg = compose([f"experiment={name}_dsprites", "model.data_shape=[1,64,64]"])
        assert cfg.callbacks.bound_curve.max_points == 10000


def test_training_time_is_summed_over_the_runs_a_resume_continues(tmp_path, monkeypatch):
    """results.json's seconds is this run's training, seconds_total that of every run resumed
    (a benchmark row resumed across sessions reported its last session's time as its own), on
    the one clock the checkpoints record (the data's setup, slowed here by 2 s, counts in
    neither); a checkpoint from before the total was recorded gives null (unknown), a tampered
    one is refused."""
    import time

    from vae_lightning.errors import CheckpointError

    setup = FreyFaceDataModule.setup
    monkeypatch.setattr(FreyFaceDataModule, "setup",
                        lambda self, stage: (time.sleep(2.0), setup(self, stage))[1])
    first = train(_frey(tmp_path, "trainer.max_samples=1000", "~callbacks.bound_curve"))
    monkeypatch.undo()
    assert first["seconds_total"] == first["seconds"] > 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)["train_seconds"]
    assert 0 < saved <= first["seconds"] < saved + 2.0
    second = train(_frey(tmp_path, "trainer.max_samples=2000", "~callbacks.bound_curve",
                         f"ckpt_path={last}"))
    assert second["seconds_total"] == pytest.approx(saved + second["seconds"], abs=1e-3)
    for value, total, length in ((None, None, 3000), (-1.0, "refused", 4000)):
        checkpoint = torch.load(last, weights_only=True)
        checkpoint.pop("train_seconds", None)
        if value is not None:
            checkpoint["train_seconds"] = value
        torch.save(checkpoint, last)
        overrides = [f"trainer.max_samples={length}", "~callbacks.bound_curve",
                     f"ckpt_path={last}"]
        if total == "refused":
            with pytest.raises(CheckpointError, match="train_seconds is -1.0"):
                train(_frey(tmp_path, *overrides))
        else:
            assert train(_frey(tmp_path, *overrides))["seconds_total"] is None


def test_a_sigterm_ends_the_run_without_the_curve_s_passes_over_whole_splits(tmp_path,
                                                                             monkeypatch):
    """A run resumed for a second epoch gets SIGTERM in its first step: Lightning ends it
    there, and the curve's points due after it (its final pass over whole splits included,
    which outlasted a scheduler's grace period on large data) are left out, so that it ends at
    once; resumed again, it ends as usual."""
    from vae_lightning.data.datamodules import VAEDataModule
    from vae_lightning.errors import Interrupted

    curve = ["callbacks.bound_curve.start=200", "callbacks.bound_curve.points_per_decade=20",
             "data.val_size=0"]
    first = train(_frey(tmp_path, *curve, "trainer.max_epochs=1"))
    kept = json.loads((tmp_path / "curve.json").read_text())["points"]
    assert kept[-1]["samples_seen"] == first["train_samples_seen"] == 1765
    passes = []
    batches = VAEDataModule.evaluation_batches

    def counted(self, split, *args, **kwargs):
        passes.append(split)
        return batches(self, split, *args, **kwargs)

    monkeypatch.setattr(VAEDataModule, "evaluation_batches", counted)
    resume = [*curve, "trainer.max_epochs=2", f"ckpt_path={tmp_path}/checkpoints/last.ckpt"]
    term = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=fit",
            "+callbacks.term.hook=on_train_batch_start"]
    with pytest.raises(Interrupted):
        train(_frey(tmp_path, *resume, *term))
    # A point was due at 10^(65/20) = 1778 samples, reached by that step (1865): left out, as
    # the final one.
    assert passes == []
    assert json.loads((tmp_path / "curve.json").read_text())["points"] == kept
    results = train(_frey(tmp_path, *resume))
    points = json.loads((tmp_path / "curve.json").read_text())["points"]
    assert points[-1]["samples_seen"] == results["train_samples_seen"] == 2 * 1765
    assert len(passes) > 0


def test_the_progress_bar_counts_to_where_max_samples_stops_the_epoch(tmp_path):
    """trainer.max_samples=300 with batches of 100: the bar counts to 3 batches, not to the
    epoch's 16 (a short try showed the whole epoch and an ETA several times too long)."""
    from vae_lightning.trainer import Bar

    cfg = _frey(tmp_path, "trainer.max_samples=300", "trainer.enable_progress_bar=true")
    totals = []
    real = Bar.on_train_epoch_start

    def record(self, trainer, *args):
        real(self, trainer, *args)
        totals.append(self.train_progress_bar.total)

    Bar.on_train_epoch_start = record
    try:
        results = train(cfg)
    finally:
        Bar.on_train_epoch_start = real
    assert results["train_samples_seen"] == 300 and totals == [3], totals
