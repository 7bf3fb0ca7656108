"""The benchmark table: every row a preset on one protocol; `vae-bench run` trains, evaluates and
records a row, resuming an unfinished run; `vae-bench page` tabulates the records."""

import functools
import json
import subprocess
import sys

import numpy as np
import pytest

from vae_lightning.data.idx import write_idx
from vae_lightning.errors import ConfigError
from vae_lightning.reports import bench


@pytest.fixture
def mnist_root(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for prefix, n in [("train", 120), ("t10k", 30)]:
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return tmp_path / "data"


# Where the override a row's `config` names acts: a config group's node, or the whole model
# (model=...); a dotted key, itself.
NODE = {"model/objective": "model.objective", "model/objective/kl_schedule": "model.objective",
        "model/posterior": "model.encoder.posterior", "model/prior": "model.prior",
        "model": "model"}
# What no row changes, whatever its override: the protocol's networks, likelihood and optimizer.
PROTOCOL = ("model.encoder.net", "model.decoder.net", "model.decoder.likelihood",
            "model.optimizer")
SHAPE = "model.data_shape=[1,28,28]"  # the data's, so that the model's sizes resolve
# The rows with networks of their own, on what every row shares but the networks
# (bench/_common.yaml): the convolutional hierarchy's.
OWN_NETWORKS = {"conv_ladder": 256 + 64 + 16}


def _settings(cfg) -> dict:
    """Every leaf of the composed config by its dotted key: the model's values resolved, the rest
    as written (their interpolations need a run directory); the benchmark node left out."""
    from omegaconf import OmegaConf

    def leaves(node, path):
        if isinstance(node, dict) and node:
            return {k: v for key, child in node.items()
                    for k, v in leaves(child, f"{path}.{key}" if path else str(key)).items()}
        return {path: node}

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain["model"] = OmegaConf.to_container(cfg.model, resolve=True)
    plain.pop("benchmark", None)
    return leaves(plain, "")


def test_the_rows_are_every_family_whose_estimate_bounds_log_px():
    assert {"vae", "iwae_k5", "dreg_k5", "vamp", "planar", "free_bits", "beta_tc", "factor_vae",
            "dip_vae_i", "dip_vae_ii", "info_vae", "wae", "capacity", "miwae", "piwae", "ciwae",
            "wake_sleep", "cyclical", "warmup", "radial", "sylvester_orthogonal",
            "sylvester_householder", "sylvester_triangular", "laplace", "student_t", "mog",
            "ladder", "ladder_warmup", "gumbel", "flow_prior", "iaf", "two_layer_vae",
            "two_layer_iwae_k5", "svae", "hvae", "m2"} <= set(bench.rows())


@functools.cache
def _protocol(preset: str = "_protocol") -> dict:
    from compose import compose_train

    return _settings(compose_train([f"experiment=bench/{preset}", SHAPE]))


@pytest.mark.parametrize("name", sorted(bench.rows()))
def test_every_row_is_a_preset_on_the_protocol_with_its_literature(name, tmp_path):
    """The row composes, passes the checks vae-train makes before building anything, keeps the
    protocol (1e7 samples, its data, networks and optimizer) and differs from it only under the
    node its `config` override names, which (for a config group) composes the row's model value
    for value; its benchmark node names the row and the literature."""
    from compose import compose_train

    from vae_lightning.config_checks import check

    node = bench.rows()[name]
    assert node["row"] and node["config"] and "paper" in node
    paper, pythae = node["paper"], node.get("pythae") or {}
    # a paper's number comes with where it is; without one, what the paper reports instead
    assert "value" in paper and paper["source"]
    assert pythae.get("value") is None or pythae["setting"]
    if pythae.get("setting"):  # pythae's settings differ row by row: each is stated
        assert "binarized MNIST" in pythae["setting"]
        assert "importance samples" in pythae["setting"], pythae["setting"]
    cfg = compose_train([f"experiment=bench/{name}", SHAPE], tmp_path)
    check(cfg)
    # the protocol: the same data, length and networks for every row
    assert cfg.data.val_size == 0 and cfg.trainer.max_samples == 1e7
    assert cfg.data.batch_size == 100 and cfg.model.optimizer.lr == 1e-3
    assert cfg.model.optimizer._target_ == "torch.optim.Adam"
    own = name in OWN_NETWORKS
    if not own:
        assert list(cfg.model.encoder.net.hidden) == [200, 200]
        assert list(cfg.model.decoder.net.hidden) == [200, 200]
    settings, protocol = _settings(cfg), _protocol("_common" if own else "_protocol")
    changed = {key for key in protocol.keys() | settings.keys()
               if protocol.get(key, "absent") != settings.get(key, "absent")}
    if own:  # its `config` names the file that gives its model on _common.yaml: what it sets
        import yaml
        from compose import CONF

        given = yaml.safe_load((CONF / node["config"].split()[0]).read_text())
        overrides = ["model", *(f"{key}.{leaf}" for key, value in given.items()
                                if key not in ("model", "defaults") for leaf in value)]
    else:
        overrides = [item.split("=", 1)[0] for item in node["config"].split()]
    where = tuple(NODE.get(key, key) for key in overrides)
    kept = PROTOCOL if not own else ("model.decoder.likelihood", "model.optimizer")
    stray = {key for key in changed if not key.startswith(where) or key.startswith(kept)}
    assert not stray, sorted(stray)
    if own:  # its networks are its own; the rest of the protocol is every row's
        assert cfg.model.latent == OWN_NETWORKS[name]
        assert "own networks" in node["note"]
    elif name.startswith("two_layer"):  # Burda et al.'s two stochastic layers
        assert list(cfg.model.encoder.posterior.layers) == [100, 50]
        assert cfg.model.latent == 150
    elif name.startswith("ladder"):  # Sønderby et al.'s five, the latent size their sum
        assert list(cfg.model.encoder.posterior.layers) == [64, 32, 16, 8, 4]
        assert cfg.model.latent == 124
    else:
        assert cfg.model.latent == 50
    if "model" not in overrides:  # model=... rows size their layers in their own preset
        made = _settings(compose_train(["experiment=bench/_protocol", *node["config"].split(),
                                        SHAPE]))
        model = {key: value for key, value in settings.items() if key.startswith("model.")}
        assert model == {key: value for key, value in made.items() if key.startswith("model.")}


# The config groups whose every option is a family of the framework the table must cover.
FAMILY_GROUPS = ("model", "model/objective", "model/objective/kl_schedule", "model/posterior",
                 "model/prior")


def test_every_option_of_the_model_groups_has_a_row_or_a_reason():
    """Each option of the model's family groups is chosen by some row, or named with the
    reason it has none in the protocol's ``not_rows`` (printed on the page): a family added
    without either fails here. A reason names options that exist and that no row uses."""
    from compose import CONF, compose_train
    from hydra.core.hydra_config import HydraConfig

    used = set()
    for name in bench.rows():
        compose_train([f"experiment=bench/{name}", SHAPE])
        used |= {f"{group}={option}" for group, option in HydraConfig.get().runtime.choices.items()
                 if group in FAMILY_GROUPS and option is not None}
    options = {f"{group}={path.stem}" for group in FAMILY_GROUPS
               for path in (CONF / group).glob("*.yaml")}
    explained = [option for item in bench.not_rows() for option in item["options"]]
    assert all(item["why"].strip() for item in bench.not_rows())
    assert len(explained) == len(set(explained)) and set(explained) <= options - used
    unexplained = options - used - set(explained)
    assert not unexplained, (
        f"{sorted(unexplained)}: a family shipped with the framework takes a row of the benchmark "
        "table, its own preset conf/experiment/bench/<row>.yaml on the protocol (copy a row such "
        "as bench/planar.yaml: the defaults choosing the option, and the benchmark node with the "
        "paper's value), or, if its number would not be a bound on log p(x) under the protocol, "
        "a reason in bench/_common.yaml's not_rows. Parts kept in one's own project "
        "(hydra.searchpath) are not checked.")


def test_the_schedules_of_the_rows_span_the_protocols_training_length():
    """The cyclical KL schedule's T and the capacity's ramp are in optimizer steps: the protocol's
    1e7 samples in minibatches of 100 are 1e5 steps, so 4 cycles of 25,000 steps and C reaching
    C_max at the last step."""
    from compose import compose_train

    from vae_lightning.objectives.kl_schedule import Cyclical

    cfg = compose_train(["experiment=bench/cyclical"])
    steps = int(cfg.trainer.max_samples / cfg.data.batch_size)
    schedule = cfg.model.objective.kl_schedule
    assert schedule.total_steps == steps
    weight = Cyclical(schedule.total_steps, schedule.cycles, schedule.ratio)
    # each cycle: w = 0 at its first step, 1 from half-way (ratio 0.5), 4 cycles in all
    starts = [t for t in range(steps) if weight(t) == 0.0]
    assert starts == [0, 25_000, 50_000, 75_000]
    assert weight(12_500) == 1.0 and weight(6_250) == 0.5 and weight(steps - 1) == 1.0
    assert compose_train(["experiment=bench/capacity"]).model.objective.capacity_steps == steps


def _run_in_this_process(command, args, log):
    """``bench._run`` in this process: its command line (``bench.COMMAND``) executed here with
    ``sys.argv`` as ``python -c`` sets it, stdout and stderr written to the row's log; the exit
    code as the subprocess's."""
    import contextlib
    import sys

    argv = sys.argv
    sys.argv = ["-c", *args]
    try:
        with open(log, "a") as out, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            exec(bench.COMMAND.format(command), {})
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv


def test_a_row_is_trained_evaluated_recorded_and_tabulated(mnist_root, tmp_path, monkeypatch):
    """vae-bench run's training and evaluations run in this process (``_run_in_this_process``:
    the same command lines, the output to the row's log)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "_run", _run_in_this_process)
    tiny = [f"data.root={mnist_root}", "trainer.max_samples=600", "logger=none",
            "callbacks.figures.n_points=0", "model.encoder.net.hidden=[16]",
            "model.decoder.net.hidden=[16]", "model.latent=2"]
    runs, records = tmp_path / "runs", tmp_path / "records"
    path = bench.run("vae", runs, records, k=3, overrides=tiny)
    record = json.loads(path.read_text())
    assert record["status"] == "completed" and record["k"] == 3 and record["n"] == 30
    assert record["train_samples_seen"] >= 600
    assert "\r" not in (runs / "vae.log").read_text()  # no progress bar in the log file
    assert "trainer.enable_progress_bar=false" not in record["overrides"]  # not the row's
    assert record["iw"]["nats"] >= record["elbo"]["nats"] - 1e-3
    assert record["bench"]["paper"]["value"] == -86.76
    # Run again: the finished run is not trained again, only evaluated.
    mtime = (runs / "vae" / "checkpoints" / "last.ckpt").stat().st_mtime
    bench.run("vae", runs, records, k=3, overrides=tiny)
    assert (runs / "vae" / "checkpoints" / "last.ckpt").stat().st_mtime == mtime
    record = json.loads(path.read_text())  # evaluated again: this run's eval time
    out = bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong")
    text = out.read_text()
    # A tiny record: not bold as a protocol number, and says why.
    assert (f"| {record['iw']['nats']:.2f} ± {record['iw']['nats_se']:.2f} (off protocol: k = 3, "
            "30 test images, ") in text
    assert "--override model.latent=2" in text and record["eval_overrides"] == []
    assert "--override logger=none" not in text  # what it logs changes no number
    assert "-86.76 (Burda et al. 2015" in text and "iwae_k5" in text.split("Rows not run yet")[1]
    assert "every row: dynamically binarized MNIST, 60,000 training images" in text  # the protocol
    assert f"from the records in `{records.as_posix()}/`" in text  # those read, not the default
    assert "- `model=cvae`, `model/prior=class_normal`: the conditional VAE models x given" in text
    # The wall time is train + eval; a record whose eval time is its last run's only says so.
    hours = (record["train_seconds"] + record["eval_seconds"]) / 3600
    assert f"| {hours:.2f} h |" in text
    path.write_text(json.dumps({**record, "eval_seconds_last_run_only": True}))
    text = bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong").read_text()
    assert f"| ≥ {hours:.2f} h |" in text


def test_a_row_stopped_before_its_first_checkpoint_trains_again(mnist_root, tmp_path,
                                                                monkeypatch):
    """A row's training stopped by SIGTERM in its first step leaves results.json (status
    interrupted) and no checkpoint: the next vae-bench run trains the row afresh in its
    directory (it was refused as a fresh run into a directory that holds a run, for good)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "_run", _run_in_this_process)
    tiny = [f"data.root={mnist_root}", "trainer.max_samples=600", "logger=none",
            "callbacks.figures.n_points=0", "model.encoder.net.hidden=[16]",
            "model.decoder.net.hidden=[16]", "model.latent=2",
            "data.steps_per_batch=1"]  # an epoch of two batches: the stop comes before its end
    term = ["+callbacks.term._target_=fault_injection.SigtermAt", "+callbacks.term.fn=fit",
            "+callbacks.term.hook=on_train_batch_start"]
    runs, records = tmp_path / "runs", tmp_path / "records"
    with pytest.raises(bench.Stopped) as stop:
        bench.run("vae", runs, records, k=3, overrides=[*tiny, *term])
    assert stop.value.code == 143 and "while training row vae" in stop.value.message
    assert json.loads((runs / "vae" / "results.json").read_text())["status"] == "interrupted"
    assert not (runs / "vae" / "checkpoints").exists()
    record = json.loads(bench.run("vae", runs, records, k=3, overrides=tiny).read_text())
    assert record["status"] == "completed" and record["train_samples_seen"] >= 600


def test_a_row_whose_training_failed_is_not_evaluated_but_named(tmp_path, monkeypatch):
    """A row whose run ended non-finite (exit code 3) or in error keeps that results.json: the
    next vae-bench run says so and how to start the row afresh, instead of evaluating a
    checkpoint of a failed run (or none) every time."""
    directory = tmp_path / "runs" / "vae"
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(
        {"status": "nonfinite", "message": "The loss is NaN at step 7.", "exit_code": 3}))
    monkeypatch.setattr(bench, "_run", lambda *args: pytest.fail("a command ran"))
    with pytest.raises(SystemExit, match=r"row vae's training ended with the status 'nonfinite'"
                                         r": The loss is NaN at step 7\. .*Move .* away"):
        bench.run("vae", tmp_path / "runs", tmp_path / "records")
    assert not (tmp_path / "records").exists()


def test_run_starts_the_command_in_a_new_python_with_its_output_in_the_log(tmp_path, monkeypatch):
    """``bench._run`` itself (the test above runs the command in this process instead): a new
    Python given ``COMMAND`` for the command and the arguments as its ``sys.argv``, its stdout
    and stderr appended to the row's log, its exit code returned. The command here is a stand-in
    that prints what it got (the real one, ``COMMAND``, is executed by the test above)."""
    stand_in = ("import sys; print('{0}', sys.argv[1:]); print('to stderr', file=sys.stderr); "
                "sys.exit(len(sys.argv) - 1)")
    monkeypatch.setattr(bench, "COMMAND", stand_in)
    log = tmp_path / "row.log"
    log.write_text("earlier\n")
    assert bench._run("train", ["experiment=bench/vae", "seed=3"], log) == 2
    assert log.read_text() == "earlier\ntrain ['experiment=bench/vae', 'seed=3']\nto stderr\n"


# A stand-in for a row's command that signals vae-bench (its parent) as a scheduler or Ctrl-C
# would, then ends as ours do when the signal reaches it: exit code 128 + the signal.
# SIGTERM goes to vae-bench alone (`kill`); Ctrl-C to the terminal's process group, both.
SIGNALLING = """import os, signal, sys, time
signal.signal(signal.{0}, lambda *_: sys.exit(128 + signal.{0}))
if signal.{0} == signal.SIGTERM:
    os.kill(os.getppid(), signal.SIGTERM)
else:
    os.killpg(os.getpgrp(), signal.SIGINT)
time.sleep(60)
sys.exit(0)
"""


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_vae_bench_reaches_the_row_s_command_and_ends_the_queue(name, code,
                                                                            tmp_path):
    """vae-bench passes SIGTERM on to the command it runs, leaves a terminal's Ctrl-C to it, and
    waits for it (the old vae-bench died of SIGTERM and left the command training, and killed it
    on Ctrl-C), then ends with the command's exit code and one line, not going on to the next
    row."""
    script = (f"import sys; from vae_lightning.reports import bench; "
              f"bench.COMMAND = {SIGNALLING.format(name)!r}; "
              f"sys.exit(bench.main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "run", "--missing", "vae", "iwae_k5",
                           "--runs", str(tmp_path / "runs"), "--records", str(tmp_path / "rec")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          start_new_session=True)  # a process group of its own, as a terminal's
    assert done.returncode == code, done.stderr[-3000:]
    # What it did (the command is silent for hours otherwise), then the one error line.
    assert done.stderr.strip().splitlines() == [
        f"vae-bench: row vae: starting its training (log: {tmp_path / 'runs' / 'vae.log'})",
        f"error: Stopped by {bench.SIGNALLED[code]} while training row vae; its state is saved "
        f"(see {tmp_path / 'runs' / 'vae.log'}). Run the same vae-bench command again to go on."]
    assert not (tmp_path / "runs" / "iwae_k5.log").exists()  # the queue ended


@pytest.mark.parametrize("argv, code, words", [
    (["run", "vae", "-k", "0"], 2, ["argument -k", "at least 1, not 0"]),
    (["run", "vae", "-k", "2.5"], 2, ["argument -k", "not 2.5"]),
    (["run", "vae", "--runs", "{file}/runs"], 2, ["--runs", "is a file, not a directory"]),
    (["run", "vae", "--records", "{file}"], 2, ["--records", "is a file, not a directory"]),
    (["run", "vae", "--runs", "/proc/vae-bench/runs"], 74,
     ["/proc/vae-bench/runs", "another --runs", "not writable"]),
    (["run", "vae", "--override", "trainer.max_samplez=3"], 2,
     ["--override", "Did you mean trainer.max_samples"]),
    (["run", "vae", "--eval-override", "eval.kk=1"], 2, ["--eval-override", "eval has no key kk"]),
    (["run", "vae", "--eval-override", "eval.k=0"], 2, ["--eval-override", "eval.k=0", ">= 1"]),
    (["page", "--records", "{tmp}/none"], 2, ["--records", "no such directory"]),
    (["page", "--records", "{file}"], 2, ["--records", "not a directory"]),
    (["page", "--records", "{tmp}", "--out", "{tmp}"], 2, ["--out", "is a directory"]),
    (["page", "--records", "{tmp}", "--out", "/proc/page.md", "--readme", ""], 74,
     ["/proc", "another --out", "not writable"]),
])
def test_bad_options_are_one_line_before_any_row_runs_or_page_is_written(
        argv, code, words, tmp_path, monkeypatch, capsys):
    """-k, the overrides, the output folders and the page's paths are checked first (a -k of 0
    or a bad --eval-override was found only by the evaluation, after the row's hours of
    training; a missing --records folder gave an empty page; an unwritable one, a traceback)."""
    file = tmp_path / "a-file"
    file.write_text("")
    monkeypatch.setattr(bench, "run", lambda *args, **kwargs: pytest.fail("a row ran"))
    monkeypatch.chdir(tmp_path)
    argv = [arg.format(file=file, tmp=tmp_path) for arg in argv]
    try:
        found = bench.main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        found = exit_.code
    err = capsys.readouterr().err
    assert found == code, err
    assert "Traceback" not in err and (err.startswith("error: ") or any(
        f"vae-bench {command}: error: " in err for command in ("run", "page"))), err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "docs").exists() and not (tmp_path / "benchmarks").exists()


def test_an_unknown_row_is_one_error_line_and_exit_code_2(capsys):
    """Bad input's code (docs: 2), not a failed row's 1."""
    with pytest.raises(ConfigError, match="no benchmark row 'nope'"):
        bench.run("nope")
    assert bench.main(["run", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: no benchmark row 'nope'")


def test_missing_runs_the_rows_without_a_record_and_goes_on_past_a_failure(
        tmp_path, monkeypatch, capsys):
    records = tmp_path / "records"
    records.mkdir()
    (records / "vae.json").write_text("{}")
    called = []

    def fake_run(row, runs, records_dir, *rest):
        called.append(row)
        if row == "iwae_k5":
            raise SystemExit(f"error: training row {row} ended with exit code 1")
        return records_dir / f"{row}.json"

    monkeypatch.setattr(bench, "run", fake_run)
    code = bench.main(["run", "--missing", "vae", "iwae_k5", "dreg_k5", "--records", str(records)])
    assert called == ["iwae_k5", "dreg_k5"] and code == 1  # vae has its record; on past iwae_k5
    err = capsys.readouterr().err
    assert "training row iwae_k5 ended" in err and "without a record after this run: iwae_k5" in err
    called.clear()
    assert bench.main(["run", "--missing", "--records", str(records)]) == 1
    assert called == [row for row in bench.rows() if row != "vae"]  # every row, in list order
    with pytest.raises(SystemExit) as stop:  # neither rows nor --missing: a usage error
        bench.main(["run"])
    assert stop.value.code == 2
    called.clear()  # a misspelt row is refused before any row runs
    assert bench.main(["run", "--missing", "dreg_k5", "nope", "--records", str(records)]) == 2
    assert "no benchmark row 'nope'" in capsys.readouterr().err
    assert called == []
    # Without --missing a failing row stops the run, as before.
    with pytest.raises(SystemExit, match="iwae_k5"):
        bench.main(["run", "iwae_k5", "dreg_k5", "--records", str(records)])


def test_page_writes_the_readme_table_between_its_markers_only(tmp_path, capsys):
    records = tmp_path / "records"
    records.mkdir()
    record = {"bench": {"row": "VAE", "config": "model/objective=elbo",
                        "paper": {"value": -86.76}, "pythae": {"value": -89.78}},
              "iw": {"nats": -89.284, "nats_se": 0.231}, "elbo": {"nats": -95.47},
              "active_units": 22, "latent": 50, "train_samples_seen": 1e7, "status": "completed"}
    (records / "vae.json").write_text(json.dumps(record))
    better = {**record, "bench": {"row": "VampPrior", "config": "model/prior=vamp"},
              "iw": {"nats": -86.89, "nats_se": 0.24}}
    (records / "vamp.json").write_text(json.dumps(better))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{bench.BEGIN}\nstale\n{bench.END}\n\nafter\n")
    bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong", readme)
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith(f"{bench.END}\n\nafter\n")
    assert "stale" not in text
    table = text.split(bench.BEGIN)[1].split(bench.END)[0]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    # Header, then the best log p(x) first, each with its config, the paper's and pythae's.
    assert lines[2].startswith("| VampPrior (`model/prior=vamp`) | -86.89 ± 0.24 |")
    assert lines[3] == ("| VAE (`model/objective=elbo`) | -89.28 ± 0.23 | -95.47 | 22 of 50 | "
                        "-86.76 | -89.78 |")
    # What the ± is, under the table: one training run a row.
    assert "One training run (one seed) a row: the ± is the standard error over" in table
    # The page too: the best first (vamp.json's row before vae.json's), and what ± and the
    # ELBO column are.
    page = (tmp_path / "benchmark.md").read_text()
    assert page.index("| VampPrior |") < page.index("| VAE |")
    assert "Each row is one training run (one seed)" in page
    assert "The ELBO column is the mean log-weight of the same 5,000 draws" in page
    # Run again: the same README (the markers stay, nothing is appended).
    bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong", readme)
    assert readme.read_text() == text
    # A README without the markers is left as it is, and the page says so.
    readme.write_text("# Mine\n")
    bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong", readme)
    assert readme.read_text() == "# Mine\n"
    assert "has no lines" in capsys.readouterr().err


def test_a_row_another_process_runs_is_skipped_by_missing_and_refused_by_name(
        tmp_path, monkeypatch, capsys):
    import fcntl
    runs, records = tmp_path / "runs", tmp_path / "records"
    runs.mkdir()
    trained = []
    monkeypatch.setattr(bench, "_run", lambda command, args, log: trained.append(args) or 1)
    with open(runs / "vae.log", "a") as held:  # another vae-bench holds the row
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(bench.Busy, match="row vae is being run by another vae-bench"):
            bench.run("vae", runs, records)
        assert trained == []  # refused before anything ran
        # --missing goes on to the next row (which fails here: _run exits 1), the busy one not
        # counted as a failure.
        assert bench.main(["run", "--missing", "vae", "iwae_k5", "--runs", str(runs),
                           "--records", str(records)]) == 1
        out, err = capsys.readouterr()
        assert "row vae is being run by another vae-bench process" in out and "skipped" in out
        assert "without a record after this run: iwae_k5" in err and "vae," not in err
        assert [args[0] for args in trained] == ["experiment=bench/iwae_k5"]
        with pytest.raises(SystemExit, match="error: row vae is being run"):
            bench.main(["run", "vae", "--runs", str(runs), "--records", str(records)])
    # The lock ends with its holder: the row runs (and fails here at training, as _run says).
    with pytest.raises(SystemExit, match="training row vae ended with exit code 1"):
        bench.run("vae", runs, records)


def test_missing_skips_a_row_recorded_meanwhile_by_another_process(tmp_path, monkeypatch):
    records = tmp_path / "records"
    called = []

    def fake_run(row, runs, records_dir, *rest):
        called.append(row)
        records_dir.mkdir(exist_ok=True)
        (records_dir / "dreg_k5.json").write_text("{}")  # another process records dreg_k5
        return records_dir / f"{row}.json"

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.main(["run", "--missing", "vae", "dreg_k5", "iwae_k5",
                       "--records", str(records)]) == 0
    assert called == ["vae", "iwae_k5"]


def test_a_row_s_note_from_its_preset_follows_the_table(tmp_path):
    """A row whose number needs a word (WAE's untrained proposal) carries `benchmark.note`; the
    page prints the preset's note under the table, for recorded rows only."""
    assert "proposal" in bench.rows()["wae"]["note"]
    records = tmp_path / "records"
    records.mkdir()
    record = {"bench": {"row": "WAE-MMD", "config": "model/objective=wae", "paper": {}},
              "iw": {"nats": -163.57, "nats_se": 0.43}, "elbo": {"nats": -377.9},
              "active_units": 50, "latent": 50, "train_samples_seen": 1e7, "status": "completed"}
    (records / "wae.json").write_text(json.dumps(record))
    (records / "vae.json").write_text(json.dumps({**record, "bench": {"row": "VAE"}}))
    text = bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong").read_text()
    notes = text.split("**Notes on rows.**")[1].split("\n\n")[1].splitlines()
    assert notes == ["- WAE-MMD: " + " ".join(bench.rows()["wae"]["note"].split())]


def test_a_semi_supervised_row_s_classifier_error_is_under_the_table(tmp_path):
    """M2's record holds its classifier's test error (the paper's measure, Table 1) beside its
    bounds; the page gave only the bounds, so the one number the paper reports for the row was
    in no table."""
    records = tmp_path / "records"
    records.mkdir()
    record = {"bench": {"row": "M2 (100 labels), U(x)", "config": "model=m2", "paper": {}},
              "iw": {"nats": -88.40, "nats_se": 0.24}, "elbo": {"nats": -94.57},
              "active_units": 20, "latent": 50, "train_samples_seen": 1e7, "status": "completed",
              "classification_error": 0.1199}
    (records / "m2.json").write_text(json.dumps(record))
    text = bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong").read_text()
    note = next(line for line in text.splitlines() if line.startswith("- M2 (100 labels)"))
    preset = " ".join(bench.rows()["m2"]["note"].split())
    assert note.startswith(f"- M2 (100 labels), U(x): {preset}")
    assert note.endswith(" Its classifier q(y|x) misclassifies 11.99 % of the test images.")
    assert "11.97 %" in bench.rows()["m2"]["paper"]["source"]  # the paper's, beside it


def test_the_literature_beside_a_row_is_its_preset_s_as_the_page_is_written(tmp_path):
    """A paper's or pythae's value corrected in a row's preset after the row was recorded is
    the page's and the README's (the record's copy is the older one); a record whose preset is
    no longer shipped keeps its own."""
    records = tmp_path / "records"
    records.mkdir()
    stale = {"value": -86.82, "setting": "statically binarized MNIST"}
    record = {"bench": {"row": "IWAE (k = 5)", "config": "model/objective=iwae",
                        "paper": {"value": -85.54, "source": "Burda et al."}, "pythae": stale},
              "iw": {"nats": -88.45, "nats_se": 0.23}, "elbo": {"nats": -98.1},
              "active_units": 23, "latent": 50, "train_samples_seen": 1e7, "status": "completed"}
    (records / "iwae_k5.json").write_text(json.dumps(record))
    gone = {**record, "bench": {**record["bench"], "row": "Gone", "pythae": {
        "value": -90.5, "setting": "statically binarized MNIST, its own setting"}}}
    (records / "gone_row.json").write_text(json.dumps(gone))
    readme = tmp_path / "README.md"
    readme.write_text(f"{bench.BEGIN}\n{bench.END}\n")
    text = bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong", readme).read_text()
    preset = bench.rows()["iwae_k5"]["pythae"]
    line = next(line for line in text.splitlines() if line.startswith("| IWAE (k = 5)"))
    assert preset["setting"] in line and "-86.82 (statically binarized MNIST)" not in line
    assert "-90.50 (statically binarized MNIST, its own setting)" in text
    table = readme.read_text()
    assert "pythae (its own setting: docs/benchmark.md)" in table
    row = next(line for line in table.splitlines() if line.startswith("| IWAE (k = 5)"))
    assert row.endswith(f"| {bench._nats(preset['value'])} |") and "-86.82" not in row


@pytest.mark.parametrize("content, words", [
    ("{trunc", ["bad.json", "is not JSON"]),
    ("[1, 2]", ["bad.json", "a JSON list, not an object"]),
    ('{"row": "x"}', ["bad.json", "has no bench", "a mapping"]),
    ("REPLACE iw.nats NaN", ["bad.json", "iw.nats=nan", "a finite number"]),
    ('REPLACE latent "50"', ["bad.json", "latent='50'", "an integer >= 0"]),
    ('REPLACE bench.paper.value "x"', ["bad.json", "bench.paper.value='x'", "finite number"]),
    ("STRETCH", ["stretches.json", "point 0's iw_se='x'", "a finite number of nats"]),
    # An overflow written as a number: it printed as 309 digits in the table.
    ("REPLACE iw.nats -1e308", ["bad.json", "iw.nats=-1e+308", "under 1e+12 in size"]),
    # A record copied to another row's file showed its numbers as that row's.
    ('REPLACE row "iwae_k5"', ["bad.json", "of row 'iwae_k5'", "names row 'bad'"]),
    ('REPLACE overrides "model.latent=2"', ["bad.json", "overrides='model.latent=2'",
                                           "a list of strings"]),
    ("REPLACE classification_error 11.99", ["bad.json", "classification_error=11.99",
                                            "a number in [0, 1]"]),
])
def test_page_refuses_a_record_it_cannot_show_in_one_line(content, words, tmp_path, capsys):
    """A record or full-length point the page cannot show (not JSON, a key missing, a value of
    another kind) is one error naming the file, the key, its value and what is accepted, exit
    code 2, and nothing is written: it was a traceback (KeyError, TypeError) after the README's
    table had been rewritten."""
    records, long = tmp_path / "records", tmp_path / "long"
    records.mkdir()
    good = {"bench": {"row": "VAE", "config": "model/objective=elbo", "paper": {"value": -86.76}},
            "iw": {"nats": -89.28, "nats_se": 0.23}, "elbo": {"nats": -95.47},
            "active_units": 22, "latent": 50, "train_samples_seen": 1e7, "status": "completed"}
    (records / "vae.json").write_text(json.dumps(good))
    if content.startswith("REPLACE"):
        _, key, value = content.split(" ", 2)
        bad = json.loads(json.dumps(good))
        *parents, last = key.split(".")
        node = bad
        for part in parents:
            node = node[part]
        node[last] = json.loads(value)
        content = json.dumps(bad)
    if content == "STRETCH":
        (long / "iwae_k1").mkdir(parents=True)
        (long / "iwae_k1" / "stretches.json").write_text(json.dumps(
            [{"epoch": 3, "samples_seen": 1e5, "iw": -90.0, "iw_se": "x"}]))
    else:
        (records / "bad.json").write_text(content)
    readme = tmp_path / "README.md"
    readme.write_text(f"{bench.BEGIN}\nold\n{bench.END}\n")
    code = bench.main(["page", "--records", str(records), "--out", str(tmp_path / "page.md"),
                       "--long", str(long), "--readme", str(readme)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "page.md").exists() and "old" in readme.read_text()


def test_page_shows_a_record_without_a_standard_error_or_samples_count(tmp_path):
    """A record of one test point has no standard error (null in strict JSON), one whose
    training recorded no count of samples none: the page shows them as "—"."""
    records = tmp_path / "records"
    records.mkdir()
    record = {"bench": {"row": "VAE"}, "iw": {"nats": -89.28, "nats_se": None},
              "elbo": {"nats": None}, "active_units": 2, "latent": 2,
              "train_samples_seen": None, "status": "completed"}
    (records / "vae.json").write_text(json.dumps(record))
    text = bench.page(records, tmp_path / "page.md", tmp_path / "nolong").read_text()
    assert "| **-89.28 ± —** | — | 2 of 2 | — |" in text


def test_a_record_off_the_protocol_is_shown_plain_with_what_it_lacks(tmp_path):
    """A quick record (``vae-bench run -k 10`` after 2,000 training samples, on 200 test
    images) is not shown in bold under the page's "k = 5000" header as a protocol number: it
    says what falls short, on the page and in the README's table; a record on the protocol
    stays bold."""
    records = tmp_path / "records"
    records.mkdir()
    base = {"bench": {"row": "VAE"}, "elbo": {"nats": -95.0}, "active_units": 2, "latent": 2,
            "status": "completed"}
    (records / "vae.json").write_text(json.dumps(
        {**base, "iw": {"nats": -89.28, "nats_se": 0.2}, "k": 5000, "n": 10000,
         "train_samples_seen": 10_000_000}))
    (records / "iaf.json").write_text(json.dumps(
        {**base, "bench": {"row": "IAF"}, "iw": {"nats": -140.5, "nats_se": 1.5}, "k": 10,
         "n": 200, "train_samples_seen": 2000}))
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{bench.BEGIN}\n{bench.END}\n")
    text = bench.page(records, tmp_path / "page.md", tmp_path / "nolong", readme).read_text()
    quick = "-140.50 ± 1.50 (off protocol: k = 10, 200 test images, 2e+03 training samples)"
    assert f"| {quick} |" in text and "**-140.50" not in text
    assert "| **-89.28 ± 0.20** |" in text
    assert f"| {quick} |" in readme.read_text() and "| -89.28 ± 0.20 |" in readme.read_text()


def test_a_record_trained_or_evaluated_with_overrides_that_change_the_row_is_off_protocol(
        tmp_path):
    """``vae-bench run --override model.latent=2`` trains another model than the row names: its
    record was bold, a protocol number. Overrides that change no number (where it runs, what it
    logs, how the evaluation is split into passes) keep it on the protocol."""
    records = tmp_path / "records"
    records.mkdir()
    base = {"row": "vae", "bench": {"row": "VAE"}, "elbo": {"nats": -95.0}, "active_units": 2,
            "latent": 2, "status": "completed", "iw": {"nats": -89.28, "nats_se": 0.2},
            "k": 5000, "n": 10000, "train_samples_seen": 10_000_000}
    neutral = {"overrides": ["experiment=bench/vae", "trainer.accelerator=gpu", "logger=wandb",
                             "trainer.max_samples=2e7"],
               "eval_overrides": ["eval.chunk=100", "eval.device=cuda", "+eval.metrics=[]"]}
    (records / "vae.json").write_text(json.dumps({**base, **neutral}))
    (records / "iaf.json").write_text(json.dumps(
        {**base, "row": "iaf", "bench": {"row": "IAF"}, "iw": {"nats": -88.0, "nats_se": 0.2},
         "overrides": ["experiment=bench/iaf", "model.latent=2"],
         "eval_overrides": ["eval.split=val"]}))
    text = bench.page(records, tmp_path / "page.md", tmp_path / "nolong").read_text()
    assert "| **-89.28 ± 0.20** |" in text
    assert ("| -88.00 ± 0.20 (off protocol: --override model.latent=2, --eval-override "
            "eval.split=val) |") in text


def test_a_record_s_words_stay_in_their_table_cell(tmp_path):
    """A paper with no source shows no "(None)"; a pipe or a line break in a record's words
    (its status, the paper's source) does not split the Markdown table's row."""
    from pathlib import Path

    records = tmp_path / "records"
    records.mkdir()
    committed = Path(__file__).resolve().parents[1] / "docs" / "benchmark" / "records"
    record = json.loads((committed / "vae.json").read_text())
    record["status"] = "completed | checked\nby hand"
    record["bench"]["paper"] = {"value": -86.76, "source": None}
    record["row"] = "own_row"
    # A row no preset describes (a shipped row's literature is its preset's).
    (records / "own_row.json").write_text(json.dumps(record))
    text = bench.page(records, tmp_path / "benchmark.md", tmp_path / "nolong").read_text()
    name = record["bench"]["row"]
    row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    assert "(None)" not in row and "| -86.76 |" in row
    assert "completed \\| checked by hand" in row
    assert row.count(" | ") == 9  # ten cells (the escaped pipe is not a separator)
