"""Hostile round twenty-two (/work/notes/hostile22.md): today's features (the bench page's
protocol check, the bundled parts' hint, the messages of a newcomer's slips, vae-summarize's
file argument) tried against what a user may write. Each test fails on the code before its fix.
"""

import json

import pytest
from compose import compose_train
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from vae_lightning.groups import bundle_hint
from vae_lightning.hydra_errors import hydra_message
from vae_lightning.reports import bench
from vae_lightning.reports.summarize import main as summarize_main


def test_a_model_option_of_one_s_own_is_not_told_to_use_the_package_s():
    """A model option of one's own (hydra.searchpath) that builds on m2 chooses m2's objective
    with its companions: any error of its model keys said 'use model=m2 instead of
    model/objective=m2 (this run has model=my_m2)', which it does not choose by hand."""
    assert bundle_hint({"model": "my_m2", "model/objective": "m2"}) is None
    hint = bundle_hint({"model": "vae", "model/objective": "m2"})  # the package's: still said
    assert hint is not None and "use model=m2 instead of model/objective=m2" in hint


@pytest.mark.parametrize("word", ["data = mnist", "data =mnist", " data=mnist"])
def test_a_quoted_override_with_spaces_around_its_equals_sign_is_told_so(word):
    """'data = mnist' (quoted: one word) was told to quote a value holding spaces, which it
    was; the spaces around '=' (or before the key) are what Hydra refuses."""
    with pytest.raises(OverrideParseException) as caught:
        OverridesParser.create().parse_overrides([word])
    message = hydra_message(caught.value)
    assert "with no spaces around '=' (data=mnist)" in message and "quote" not in message


@pytest.mark.parametrize("override,guess", [
    ("BETA=4", "Did you mean model.objective.beta?"),
    ("Latent=3", "Did you mean model.latent or"),
    ("model.Latent=3", "Did you mean model.latent?"),  # the key here in another case first
])
def test_a_key_deeper_down_in_another_case_is_suggested(override, guess):
    """beta=4 was told model.objective.beta; BETA=4 was told nothing."""
    with pytest.raises((HydraException, OmegaConfBaseException)) as caught:
        compose_train([override])
    assert guess in hydra_message(caught.value)


BASE = {"bench": {"row": "VAE"}, "elbo": {"nats": -95.0}, "active_units": 2, "latent": 2,
        "status": "completed", "iw": {"nats": -89.28, "nats_se": 0.2}, "k": 5000, "n": 10000,
        "train_samples_seen": 10_000_000}


def test_a_record_of_no_row_is_its_file_s_row(tmp_path):
    """A record whose row is null (the schema allows it) was off protocol for its own
    experiment=bench/<row>: '(off protocol: --override experiment=bench/vae)'."""
    records = tmp_path / "records"
    records.mkdir()
    (records / "vae.json").write_text(json.dumps(
        {**BASE, "row": None, "overrides": ["experiment=bench/vae"]}))
    (records / "iaf.json").write_text(json.dumps(  # another row's run: off protocol still
        {**BASE, "row": None, "bench": {"row": "IAF"}, "iw": {"nats": -88.0, "nats_se": 0.2},
         "overrides": ["experiment=bench/vae"]}))
    text = bench.page(records, tmp_path / "page.md", tmp_path / "nolong").read_text()
    assert "| **-89.28 ± 0.20** |" in text
    assert "| -88.00 ± 0.20 (off protocol: --override experiment=bench/vae) |" in text


def test_where_it_runs_and_the_options_of_what_it_adds_keep_a_record_on_the_protocol(
        tmp_path):
    """trainer=gpu (conf/trainer/gpu.yaml: the accelerator alone, as trainer.accelerator=gpu)
    and the sample quality's and metrics' own options (eval.samples, eval.metric_options...)
    change no bound, as eval.sample_quality and eval.metrics do not: they were off protocol."""
    records = tmp_path / "records"
    records.mkdir()
    (records / "vae.json").write_text(json.dumps(
        {**BASE, "row": "vae", "overrides": ["experiment=bench/vae", "trainer=gpu"],
         "eval_overrides": ["eval.sample_quality=[fid]", "eval.samples=1000",
                            "eval.kid_subset_size=100", "eval.metric_options.mig.bins=10"]}))
    (records / "iaf.json").write_text(json.dumps(
        {**BASE, "row": "iaf", "bench": {"row": "IAF"}, "iw": {"nats": -88.0, "nats_se": 0.2},
         "overrides": ["experiment=bench/iaf", "trainer=ddp"]}))  # two devices: another batch
    text = bench.page(records, tmp_path / "page.md", tmp_path / "nolong").read_text()
    assert "| **-89.28 ± 0.20** |" in text
    assert "| -88.00 ± 0.20 (off protocol: --override trainer=ddp) |" in text


def test_a_link_to_a_results_file_names_its_target_s_folder(tmp_path, capsys):
    """vae-summarize link.json (a link to <run>/results.json) named the link's folder, which
    is not the run's, as the one to give."""
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"status": "completed"}))
    here = tmp_path / "links"
    here.mkdir()
    (here / "results.json").symlink_to(run / "results.json")
    assert summarize_main([str(here / "results.json")]) == 2
    err = capsys.readouterr().err
    assert f"one run's: {str(run.resolve())!r}" in err


def test_a_resumed_curve_s_legend_does_not_say_0_points():
    """A resumed run's curves.png before its curve's first point (stopped by a SIGTERM, or
    with nothing left to train) labelled the checkpoint's points 'training data, 0 points':
    the sizes were of this run's evaluations only. The checkpoint keeps them now; an older
    one's legend names no size."""
    from types import SimpleNamespace

    from vae_lightning.callbacks.curve import BoundCurve
    from vae_lightning.callbacks.figures import log_spaced

    points = [{"samples_seen": 10_000, "train/elbo": -90.0, "test/elbo": -91.0}]
    older = BoundCurve(splits=["train", "test"])
    older.load_state_dict({"points": points, "next_samples": 1.6e4})  # no sizes kept
    labels = list(log_spaced(SimpleNamespace(callbacks=[older])))
    assert labels == ["training data, at log-spaced counts (curve.json)",
                      "test data, at log-spaced counts (curve.json)"]
    first = BoundCurve(splits=["train", "test"])
    first.points, first._sizes = points, {"train": 60_000, "test": 10_000}
    resumed = BoundCurve(splits=["train", "test"])
    resumed.load_state_dict(first.state_dict())
    assert list(log_spaced(SimpleNamespace(callbacks=[resumed]))) == [
        "training data, 60,000 points, at log-spaced counts (curve.json)",
        "test data, 10,000 points, at log-spaced counts (curve.json)"]
