"""Hostile round eleven (/work/notes/hostile11.md): each test fails on the code before its fix."""

import json

import pytest
from compose import compose_train

from vae_lightning.reports import bench

TINY = ["model.latent=2", "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]",
        "data.batch_size=64", "trainer.enable_progress_bar=false", "callbacks.figures=null",
        "callbacks.bound_curve=null", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1"]


@pytest.mark.parametrize("content", ["garbage", "[1]"])
def test_bench_run_of_a_row_whose_results_json_is_unreadable_ends_the_row_in_one_line(
        tmp_path, content):
    """vae-bench run read the row's results.json with json.loads: one that does not parse (or is
    not an object) was a JSONDecodeError / AttributeError traceback, and under --missing it
    ended the queue instead of the row."""
    (tmp_path / "runs" / "vae").mkdir(parents=True)
    (tmp_path / "runs" / "vae" / "results.json").write_text(content)
    with pytest.raises(SystemExit) as ended:
        bench.main(["run", "vae", "--runs", str(tmp_path / "runs"), "--records",
                    str(tmp_path / "records"), "-k", "2"])
    message = str(ended.value.code)
    assert message.startswith("error: row vae:") and "results.json" in message
    assert "move" in message and "\n" not in message
    assert not (tmp_path / "records" / "vae.json").exists()


@pytest.fixture
def no_tracking_server(monkeypatch):
    """MLflow on its local store only: nothing reaches the network."""
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)


def test_a_resume_whose_mlflow_run_is_not_in_this_store_logs_to_a_new_run(
        no_tracking_server, tmp_path, caplog):
    """The checkpoint keeps the MLflow run id, and a resume passed it to MLflow's logger: where
    the store does not hold that run (the run moved to another machine, another save_dir or
    tracking URI) the resume died before its first step with MLflow's 'Run with id=... not found'
    traceback (exit 1), and could not be resumed with logger=mlflow at all."""
    from mlflow.tracking import MlflowClient

    from vae_lightning.train import train

    run = tmp_path / "run"
    train(compose_train([*TINY, "logger=mlflow", f"logger.mlflow.save_dir={tmp_path / 'A'}",
                         "trainer.max_steps=2"], run))
    train(compose_train([*TINY, "logger=mlflow", f"logger.mlflow.save_dir={tmp_path / 'B'}",
                         "trainer.max_steps=4",
                         f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run))
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert "is not in the tracking store" in caplog.text
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'B' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vae-lightning")
    (new,) = client.search_runs([experiment.experiment_id])
    assert "test/elbo" in new.data.metrics


@pytest.mark.parametrize("overrides, words", [
    (["+optimized_metric=val/elbo", "data.val_size=0"], "data.val_size=0"),
    (["+optimized_metric=val/kl", "+trainer.limit_val_batches=0"],
     "trainer.limit_val_batches=0"),
    (["+optimized_metric=test/elbo", "+trainer.limit_test_batches=0"],
     "trainer.limit_test_batches=0"),
    (["+optimized_metric=train/loss"], "train/elbo"),  # logged per step, never in results.json
    (["+optimized_metric=val/mi"], "val/elbo"),
])
def test_an_optimized_metric_the_run_never_records_is_refused_before_training(
        tmp_path, overrides, words):
    """optimized_metric was checked against (train|val|test)/<word> only: one that results.json
    never holds (a split the run does not score, a step's train/loss) let the run train in full
    and then failed (exit 2), every trial of an Optuna sweep alike."""
    from vae_lightning.config_checks import check
    from vae_lightning.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        check(compose_train(overrides, tmp_path))
    assert "optimized_metric" in str(refused.value) and words in str(refused.value)


def test_the_metrics_results_json_holds_are_accepted_as_optimized_metric(tmp_path):
    from vae_lightning.config_checks import check

    for metric in ("val/elbo", "test/kl", "train/elbo", "test/bits_per_dim", "val/recon"):
        check(compose_train([f"+optimized_metric={metric}"], tmp_path))


def test_beta_tc_mss_with_a_dataset_size_that_is_not_the_training_splits_is_refused(tmp_path):
    """estimator=mss weights each minibatch by N = model.objective.dataset_size, the number of
    training points; only an N below the minibatch was refused, so an experiment's N kept when
    the splits change (beta_tc_dsprites' 717280 with data.val_size=0, or on data=dsprites_small)
    biased every estimate of q(z) without a word. Refused before the first step, naming N."""
    from vae_lightning.errors import ConfigError
    from vae_lightning.train import train

    overrides = [*TINY, "model/objective=beta_tc", "model.objective.estimator=mss",
                 "trainer.max_steps=1"]
    with pytest.raises(ConfigError) as refused:
        train(compose_train([*overrides, "model.objective.dataset_size=717280"],
                            tmp_path / "wrong"))
    assert "model.objective.dataset_size=717280" in str(refused.value)
    n = int(str(refused.value).split("holds ")[1].split()[0])
    assert not (tmp_path / "wrong" / "results.json").exists()
    results = train(compose_train([*overrides, f"model.objective.dataset_size={n}"],
                                  tmp_path / "right"))
    assert results["status"] == "completed"


LAYERS = ["model.encoder.posterior.layers=[3,2]", "model.prior.net.hidden=[8]",
          "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]"]


def test_piwae_on_the_ladder_vae_is_refused_when_composed(tmp_path):
    """PIWAE gives theta IWAE's gradient by a second pass at the detached samples, which reaches
    theta through the decoder and the prior only: the Ladder VAE's q is built with the prior's
    top-down networks, so those (theta) got MIWAE's gradient through q, silently. As
    wake-sleep, which trains the two apart too, it is refused; model=hierarchy still trains."""
    from vae_lightning.errors import ConfigError
    from vae_lightning.train import build_run

    with pytest.raises(ConfigError) as refused:
        build_run(compose_train(["model=ladder", "model/objective=piwae", *LAYERS], tmp_path))
    assert "PIWAE" in str(refused.value) and "model=hierarchy" in str(refused.value)
    build_run(compose_train(["model=hierarchy", "model/objective=piwae",
                             "model.encoder.posterior.net.hidden=[8]", *LAYERS], tmp_path))
    with pytest.raises(ConfigError, match="wake-sleep"):  # its own check, now shared
        build_run(compose_train(["model=ladder", "model/objective=wake_sleep", *LAYERS],
                                tmp_path))


def test_the_shared_probe_draws_in_a_forked_stream(tmp_path):
    """The probe of q's dependence on the generative model draws z: it must not move the run's
    random stream (its draws are its seed's)."""
    import torch

    from vae_lightning.objectives.base import q_reads_generative
    from vae_lightning.train import build_run

    model = build_run(compose_train(["model=ladder", "model/objective=iwae", *LAYERS],
                                    tmp_path)).model
    torch.manual_seed(3)
    assert q_reads_generative(model)
    assert torch.equal(torch.rand(4), torch.manual_seed(3) and torch.rand(4))


def test_traversals_of_a_hierarchy_sweep_only_the_units_the_decoder_reads(tmp_path):
    """The decoder of stochastic layers reads z_1 alone: a traversal row of a unit of z_2 (z_1
    kept) decoded to the same image at every value, and vae-sample traverse=true / the figures
    callback drew such rows beside the others, ranked among them, without a word."""
    import torch

    from vae_lightning.callbacks.traversals import traversal
    from vae_lightning.train import build_run

    torch.manual_seed(0)
    model = build_run(compose_train(["model=hierarchy", "model.encoder.posterior.net.hidden=[8]",
                                     *LAYERS], tmp_path)).model.eval()
    x = torch.rand(30, 1, 28, 20, generator=torch.Generator().manual_seed(1))
    found = traversal(model, x, bases=2, steps=4)
    assert sorted(found.ranking.dims) == [0, 1, 2]  # z_1's 3 units of [3, 2]
    assert "decoder reads" in found.ranking.what
    for row in range(found.images.shape[1]):  # every row changes with its unit's value
        assert not torch.allclose(found.images[0, row, 0], found.images[0, row, -1])
    assert traversal(model, x, bases=1, steps=3, dims=2).images.shape[1] == 2


def _protocol_record(k: int) -> dict:
    return {"row": "vae", "bench": {"row": "VAE"}, "status": "completed",
            "train_samples_seen": 1e7, "train_seconds": 3600.0, "eval_seconds": 60.0,
            "test/elbo": -90.0, "iw": {"nats": -85.0, "nats_se": 0.1},
            "elbo": {"nats": -90.0}, "k": k, "n": 10000, "active_units": 20, "latent": 50}


def test_a_quick_bench_run_does_not_replace_the_rows_protocol_record(tmp_path, monkeypatch,
                                                                      capsys):
    """vae-bench run <row> -k 10 (or an --eval-override eval.limit) wrote its record over the
    row's record on the protocol (k = 5000 on all test images after 1e7 samples): hours of
    evaluation gone from docs/benchmark/records, the page showing the quick number. The quick
    record is written under records/off-protocol/ (which the page does not read) and said so."""
    runs, records = tmp_path / "runs", tmp_path / "records"
    (runs / "vae").mkdir(parents=True)
    (runs / "vae" / "results.json").write_text(json.dumps(
        {"status": "completed", "train_samples_seen": 1e7, "seconds": 1.0,
         "seconds_total": 1.0, "test/elbo": -90.0}))
    records.mkdir()
    kept = json.dumps(_protocol_record(5000))
    (records / "vae.json").write_text(kept)

    def evaluate(command, args, log):  # vae-eval's eval.json, without the evaluation
        assert command == "evaluate"
        evaluation = {key: value for key, value in _protocol_record(10).items()
                      if key in ("iw", "elbo", "k", "n", "active_units", "latent")}
        (runs / "vae" / "eval.json").write_text(json.dumps(evaluation))
        return 0

    monkeypatch.setattr(bench, "_run", evaluate)
    written = bench.run("vae", runs, records, k=10)
    assert (records / "vae.json").read_text() == kept
    assert written == records / "off-protocol" / "vae.json"
    assert json.loads(written.read_text())["k"] == 10
    assert "off protocol" in capsys.readouterr().err
    # A protocol run (or a first record) still writes the row's record.
    (records / "vae.json").unlink()
    assert bench.run("vae", runs, records, k=10) == records / "vae.json"


def test_model_classes_without_a_part_that_reads_the_label_is_refused(tmp_path):
    """model.classes=10 on model=vae (no conditional encoder, decoder or prior) trained an
    unconditional model, and results.json (and vae-eval) called its bound log p(x|y), 'not
    log p(x)'; vae-sample took a y and ignored it. Refused before the first step."""
    from compose import mnist_like

    from vae_lightning.errors import ConfigError
    from vae_lightning.train import train

    root = mnist_like(tmp_path / "data")
    common = ["data=mnist", f"data.root={root}", "data.val_size=40", "trainer.max_steps=1",
              *TINY]
    with pytest.raises(ConfigError) as refused:
        train(compose_train([*common, "model.classes=10"], tmp_path / "run"))
    assert "model.classes=10" in str(refused.value) and "model=cvae" in str(refused.value)
    assert not (tmp_path / "run" / "results.json").exists()
    results = train(compose_train(["model=cvae", *common], tmp_path / "cvae"))  # still trains
    assert results["status"] == "completed" and "log p(x|y)" in results["bound_of"]


def test_a_tampered_mlflow_run_id_in_a_checkpoint_is_refused_before_the_resume(
        no_tracking_server, tmp_path):
    """ResumeState's mlflow_run_id is handed to MLflow's logger on resume: an id MLflow does not
    take (a tampered file: '../x') was MLflow's INVALID_PARAMETER_VALUE traceback (exit 1) after
    the run had been set up; now one CheckpointError line, as the other resumed states."""
    import torch

    from vae_lightning.errors import CheckpointError
    from vae_lightning.train import train

    run = tmp_path / "run"
    train(compose_train([*TINY, "trainer.max_steps=2"], run))
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    checkpoint["callbacks"]["ResumeState"]["mlflow_run_id"] = "../x"
    torch.save(checkpoint, last)
    with pytest.raises(CheckpointError) as refused:
        train(compose_train([*TINY, "trainer.max_steps=4", "logger=mlflow",
                             f"logger.mlflow.save_dir={tmp_path / 'store'}",
                             f"ckpt_path={last}"], run))
    assert "mlflow_run_id" in str(refused.value) and "'../x'" in str(refused.value)


def test_no_manifold_is_drawn_for_two_stochastic_layers_of_one_unit(tmp_path):
    """model=hierarchy with layers [1, 1] has a 2-d latent space, and the figures drew its
    'learned 2-d manifold' over (z_1, z_2): the decoder reads z_1 alone, so every image along
    the z_2 axis was the same, a figure that shows nothing of z_2 (nor is N(0, I) the prior of
    z_1 that the grid's inverse CDF assumes). Left out, as for any latent space it does not
    fit; the other figures are drawn."""
    from vae_lightning.train import train

    run = tmp_path / "run"
    train(compose_train(["model=hierarchy", "model.encoder.posterior.layers=[1,1]",
                         "model.encoder.posterior.net.hidden=[4]", "model.prior.net.hidden=[4]",
                         "trainer.max_steps=2", "callbacks.figures.n_points=20",
                         *[o for o in TINY if not o.startswith(("model.latent",
                                                                "callbacks.figures"))]], run))
    drawn = {path.stem for path in (run / "figures").glob("*.png")}
    assert "samples" in drawn and "manifold" not in drawn


def test_a_bits_per_dim_metric_of_a_run_that_logs_none_is_refused_before_training(tmp_path):
    """optimized_metric or an early-stopping monitor of */bits_per_dim on Frey Face's Gaussian
    (a density: no code length, none logged) trained in full, then failed on the metric; now
    refused before training, naming the key and the split's elbo. Binarized MNIST logs them."""
    from vae_lightning.errors import ConfigError
    from vae_lightning.train import build_run

    frey = ["data=frey", "model.latent=2", "logger=none"]
    with pytest.raises(ConfigError, match=r"optimized_metric=val/bits_per_dim: this run logs no "
                       r"bits per dimension.*val/elbo"):
        build_run(compose_train([*frey, "+optimized_metric=val/bits_per_dim"], tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"callbacks.early_stopping.monitor=val/bits_per_dim"):
        build_run(compose_train([*frey, "callbacks=[default,early_stopping]",
                                 "callbacks.early_stopping.monitor=val/bits_per_dim"],
                                tmp_path / "b"))
    build_run(compose_train([*frey, "+optimized_metric=val/elbo"], tmp_path / "c"))
