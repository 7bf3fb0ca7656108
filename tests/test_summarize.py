"""The sweep summary: a markdown table, a CSV and a plot from the jobs' results.json."""

import csv
import json

import pytest

from vae_lightning.reports.summarize import SummaryError, main, summarize

JOBS = [
    {"data": "frey", "latent": 5, "prior": "normal", "epochs": 3, "train_samples_seen": 4695,
     "val/elbo": 700.5, "test/elbo": 690.25, "test/recon": 720.0, "test/kl": 29.75},
    {"data": "frey", "latent": 2, "prior": "normal", "epochs": 3, "train_samples_seen": 4695,
     "val/elbo": 600.0, "test/elbo": 590.125, "test/recon": 605.0, "test/kl": 14.875},
]


@pytest.fixture
def sweep(tmp_path):
    for num, results in enumerate(JOBS):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_summary_table_csv_and_plot_from_two_jobs(sweep, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    lines = (sweep / "summary.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == ("| job | data | latent | prior | epochs | train_samples_seen | val/elbo "
                        "| test/elbo | test/recon | test/kl |")
    # Sorted by latent size; floats with two decimals.
    assert table[2] == "| 1 | frey | 2 | normal | 3 | 4695 | 600.00 | 590.12 | 605.00 | 14.88 |"
    assert table[3] == "| 0 | frey | 5 | normal | 3 | 4695 | 700.50 | 690.25 | 720.00 | 29.75 |"
    assert "\n".join(table) in printed
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["latent"], float(r["test/elbo"])) for r in rows] == [
        ("1", "2", 590.125), ("0", "5", 690.25)]
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_bound_is_a_column_when_the_results_have_it(sweep):
    for num in (0, 1):
        path = sweep / str(num) / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "train/elbo": 650.0 + num}))
    table = summarize(sweep)
    assert "| train/elbo | val/elbo |" in table and "| 651.00 | 600.00 |" in table


def test_the_training_bound_at_the_end_is_read_from_the_curve(sweep, monkeypatch):
    """train/elbo, the mean over the last epoch's minibatches as trained, lies far below the
    test bound in a short run; the curve's last point (at the end of training) is the bound of
    the model the test bound is of: a column train/end, and the line the plot draws as train
    (newcomer walkthrough eight). A curve that stops before the end gives none."""
    for num, end in ((0, 4695), (1, 4000)):
        job = sweep / str(num)
        results = json.loads((job / "results.json").read_text())
        (job / "results.json").write_text(json.dumps({**results, "train/elbo": 500.0}))
        (job / "curve.json").write_text(json.dumps({"points": [
            {"samples_seen": 1000, "train/elbo": 100.0, "test/elbo": 90.0},
            {"samples_seen": end, "train/elbo": 700.0 + num, "test/elbo": 690.0}]}))
    table = summarize(sweep)
    assert "| train/elbo | train/end | val/elbo |" in table
    assert "| 0 | frey | 5 | normal | 3 | 4695 | 500.00 | 700.00 | 700.50 |" in table
    assert "| 1 | frey | 2 | normal | 3 | 4695 | 500.00 |  | 600.00 |" in table
    drawn = []
    from vae_lightning.reports import summarize as module

    real = module.plot
    monkeypatch.setattr(module, "plot", lambda rows, path: drawn.append(
        module._train_series([r for r in rows if module._completed(r)])) or real(rows, path))
    summarize(sweep)
    assert drawn == [("train/elbo", " (mean while training)")]  # job 1 has no end point
    (sweep / "1" / "curve.json").unlink()
    (sweep / "1" / "results.json").write_text(json.dumps(JOBS[1]))  # no training bound
    summarize(sweep)
    assert drawn[-1] == ("train/end", "")
    (sweep / "0" / "curve.json").write_text("{not json")
    with pytest.raises(SummaryError, match="curve.json .* is not JSON"):
        summarize(sweep)


def test_a_conditional_model_s_bound_is_marked(sweep):
    """A conditional VAE's test/elbo bounds log p(x|y), given the label: not comparable with
    the others' log p(x). results.json says so (bound_of), and so does the table, whether or
    not the job was evaluated by vae-eval (newcomer walkthrough eight)."""
    for num, bound in ((0, "log p(x|y), a conditional likelihood of each image given its own "
                           "class label y (no p(y) is modelled): not log p(x)"),
                       (1, "log p(x)")):
        path = sweep / str(num) / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "bound_of": bound}))
    table = summarize(sweep)
    assert "| objective |" not in table and "| prior | bound_of | epochs |" in table
    assert "| 0 | frey | 5 | normal | log p(x\\|y) | 3 |" in table  # its pipe escaped
    assert "| 1 | frey | 2 | normal |  | 3 |" in table


def test_no_results_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SummaryError, match="no results.json"):
        summarize(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "error: no results.json under" in capsys.readouterr().err


def test_a_results_file_given_for_its_folder_is_named_so(sweep, capsys):
    """vae-summarize <run>/results.json said "no results.json under .../results.json"."""
    assert main([str(sweep / "0" / "results.json")]) == 2
    err = capsys.readouterr().err
    assert "is a file: give the folder that holds the runs" in err and str(sweep / "0") in err


def test_a_results_file_s_own_job_key_does_not_rename_its_job(sweep):
    """The job column is the job's folder: a results.json's own "job" key took its place."""
    path = sweep / "0" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "job": "1"}))
    summarize(sweep)
    with open(sweep / "summary.csv") as f:
        assert sorted(row["job"] for row in csv.DictReader(f)) == ["0", "1"]


def test_tags_are_a_column(sweep):
    path = sweep / "0" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "tags": ["baseline", "frey"]}))
    table = summarize(sweep)
    assert table.splitlines()[0].startswith("| job | tags | data |")
    assert "| 0 | baseline, frey | frey | 5 |" in table and "| 1 |  | frey | 2 |" in table
    with open(sweep / "summary.csv") as f:
        assert [row["tags"] for row in csv.DictReader(f)] == ["", "baseline, frey"]


@pytest.mark.parametrize("content, words", [
    ('{"latent": 2, "test/el', ["is not JSON"]),
    ("[1, 2]", ["holds a JSON list, not an object"]),
    ('{"latent": "2", "test/elbo": 1.0}', ["latent='2' is not allowed", "an integer >= 1"]),
    ('{"latent": 3, "test/elbo": "x"}', ["test/elbo='x' is not allowed", "a finite number"]),
    ('{"latent": 3, "status": "failed", "overrides": "seed=1"}',
     ["overrides='seed=1' is not allowed", "a list of strings"]),
])
def test_a_results_json_the_summary_cannot_show_is_one_error(content, words, sweep, capsys):
    """A job's results.json that does not parse or holds a value of another kind where the
    table, the sort or the plot reads it is one error naming the file, the key and what is
    accepted, exit code 2 (it was a traceback: JSONDecodeError, TypeError), nothing written."""
    (sweep / "2").mkdir()
    (sweep / "2" / "results.json").write_text(content)
    _one_error(sweep, sweep / "2" / "results.json", words, capsys)


def _one_error(sweep, path, words, capsys):
    """vae-summarize of ``sweep`` ends with one error line naming ``path`` and ``words``, exit
    code 2, nothing written."""
    assert main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (sweep / "summary.md").exists()


def test_the_swept_keys_are_columns(sweep):
    """A sweep of a key the conditions do not show (``-m model.latent=2,5
    model.objective.beta=1,4``) gets a column; a key that is the same in every job, or already a
    column (``model.latent`` is ``latent``; ``tags``), does not."""
    for num, (latent, beta) in enumerate([(2, 1), (2, 4), (5, 1), (5, 4)]):
        (sweep / str(num)).mkdir(exist_ok=True)
        (sweep / str(num) / "results.json").write_text(json.dumps(
            {**JOBS[0], "latent": latent, "test/elbo": 100.0 * beta + latent,
             "overrides": [f"model.latent={latent}", f"model.objective.beta={beta}",
                           "trainer.max_samples=2000", f"+tags=[b{beta}]"]}))
    table = summarize(sweep).splitlines()
    assert table[0] == ("| job | data | latent | prior | epochs | train_samples_seen | "
                        "model.objective.beta | val/elbo | test/elbo | test/recon | test/kl |")
    assert [line.split(" | ")[6] for line in table[2:]] == ["1", "4", "1", "4"]
    with open(sweep / "summary.csv") as f:
        assert [row["model.objective.beta"] for row in csv.DictReader(f)] == ["1", "4", "1", "4"]


def _lines_drawn(monkeypatch):
    """The lines summary.png will draw, as (x, y, label), recorded as they are drawn."""
    from vae_lightning.reports import summarize as module

    drawn = []
    plt = module.pyplot()
    real_subplots = plt.subplots

    def subplots(*args, **kwargs):
        fig, ax = real_subplots(*args, **kwargs)
        real_plot = ax.plot
        ax.plot = lambda x, y, **kw: drawn.append((list(x), list(y), kw["label"])) or real_plot(
            x, y, **kw)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", subplots)
    return drawn


def test_the_plot_draws_a_line_per_setting_of_the_swept_keys(sweep, monkeypatch):
    """The bounds of beta = 1 and beta = 4 are not averaged at each latent size: a line each."""
    for num, (latent, beta) in enumerate([(2, 1), (2, 4), (5, 1), (5, 4)]):
        (sweep / str(num)).mkdir(exist_ok=True)
        (sweep / str(num) / "results.json").write_text(json.dumps(
            {"latent": latent, "test/elbo": 100.0 * beta + latent,
             "overrides": [f"model.latent={latent}", f"model.objective.beta={beta}"]}))
    drawn = _lines_drawn(monkeypatch)
    summarize(sweep)
    assert sorted(drawn) == [([2, 5], [102.0, 105.0], "test, model.objective.beta=1"),
                             ([2, 5], [402.0, 405.0], "test, model.objective.beta=4")]


EVAL = {"checkpoint": "/runs/sweep/0/checkpoints/last.ckpt", "split": "test", "k": 5000,
        "n": 10000, "elbo": {"nats": 695.0, "nats_se": 1.0},
        "iw": {"nats": 701.375, "nats_se": 1.25, "bits_per_dim": None, "bits_per_dim_se": None},
        "ais": {"nats": 702.5, "nats_se": 1.5, "minus_iw": {"nats": 1.125, "nats_se": 0.25}}}


def test_a_job_s_vae_eval_estimate_is_a_column_beside_its_bounds(sweep):
    """Families compared one run each are compared by log p(x): each job's eval.json (vae-eval's
    newest evaluation) gives the IW estimate with its standard error, the checkpoint, split, k
    and points it was computed on, and AIS where it ran; a job not evaluated has empty cells."""
    (sweep / "0" / "eval.json").write_text(json.dumps(EVAL))
    table = summarize(sweep).splitlines()
    assert table[0].endswith("| test/kl | eval/checkpoint | eval/split | eval/k | eval/n | "
                             "eval/iw | eval/iw_se | eval/ais | eval/ais_se |")
    assert table[3].endswith("| 29.75 | last.ckpt | test | 5000 | 10000 | 701.38 | 1.25 | "
                             "702.50 | 1.50 |")  # job 0 (latent 5)
    assert table[2].endswith("| 14.88 |  |  |  |  |  |  |  |  |")  # job 1: no eval.json
    with open(sweep / "summary.csv") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert float(rows["0"]["eval/iw"]) == 701.375 and rows["1"]["eval/iw"] == ""
    # Without AIS, no AIS columns; nor a standard error where the one evaluation has none.
    (sweep / "0" / "eval.json").write_text(json.dumps(
        {**EVAL, "n": 1, "ais": None, "iw": {"nats": 701.375, "nats_se": None}}))
    table = summarize(sweep).splitlines()
    assert "eval/ais" not in table[0] and "eval/iw_se" not in table[0]
    assert table[3].endswith("| 1 | 701.38 |")
    # What the estimates bound, where it is not log p(x): a conditional model's log p(x|y).
    (sweep / "1" / "eval.json").write_text(json.dumps({**EVAL, "bound_of": "log p(x)"}))
    assert "eval/bound_of" not in summarize(sweep).splitlines()[0]
    (sweep / "1" / "eval.json").write_text(json.dumps({**EVAL, "bound_of": "log p(x|y), ..."}))
    table = summarize(sweep).splitlines()
    assert table[0].endswith("| eval/bound_of |") and table[2].endswith("| log p(x\\|y), ... |")
    assert table[3].endswith("|  |")


def test_the_plot_labels_the_iw_estimate_with_its_k_and_points(sweep, monkeypatch):
    """summary.png's log p(x) line says which estimate it draws (k and points) where every job
    shares them, and sends the reader to the table where they differ."""
    for job in ("0", "1"):
        (sweep / job / "eval.json").write_text(json.dumps(EVAL))
    drawn = _lines_drawn(monkeypatch)
    summarize(sweep)
    assert [label for *_, label in drawn if "log p(x)" in label] == [
        "test log p(x), IW (k = 5000, 10,000 points)"]
    (sweep / "1" / "eval.json").write_text(json.dumps({**EVAL, "k": 100}))
    drawn.clear()
    summarize(sweep)
    assert [label for *_, label in drawn if "log p(x)" in label] == [
        "test log p(x), IW (k and points differ: the table)"]


@pytest.mark.parametrize("content, words", [
    ('{"split": "test", "k": 5', ["is not JSON"]),
    (json.dumps({**EVAL, "iw": {"nats": "high"}}), ["iw.nats='high' is not allowed",
                                                    "a finite number"]),
    (json.dumps({**EVAL, "k": 0}), ["k=0 is not allowed", "an integer >= 1"]),
    (json.dumps({key: v for key, v in EVAL.items() if key != "iw"}), ["has no iw"]),
])
def test_an_eval_json_the_summary_cannot_show_is_one_error(content, words, sweep, capsys):
    (sweep / "1" / "eval.json").write_text(content)
    _one_error(sweep, sweep / "1" / "eval.json", words, capsys)


def test_the_plot_does_not_average_different_model_families(sweep, monkeypatch):
    """A sweep over objectives and priors (columns of their own, so no swept-key column): one
    line per family, not the mean of four models at each latent size; seeds are averaged."""
    jobs = [(objective, prior, seed) for objective in ("elbo", "iwae") for prior in
            ("normal", "mog") for seed in (0, 1)]
    for num, (objective, prior, seed) in enumerate(jobs):
        (sweep / str(num)).mkdir(exist_ok=True)
        value = {"elbo": 100.0, "iwae": 200.0}[objective] + {"normal": 0, "mog": 10}[prior]
        (sweep / str(num) / "results.json").write_text(json.dumps(
            {"latent": 20, "objective": objective, "prior": prior, "seed": seed,
             "test/elbo": value + seed, "overrides": [f"model/objective={objective}",
                                                      f"model/prior={prior}", f"seed={seed}"]}))
    drawn = _lines_drawn(monkeypatch)
    table = summarize(sweep)
    # At one latent size, a row per family (not four points stacked at x = 20 under a legend
    # that hid them): the seeds' mean of each, at its row.
    assert drawn == [([100.5, 110.5, 200.5, 210.5], [0, 1, 2, 3], "test ELBO")]
    # and the table by setting: each family's mean, standard deviation and seeds.
    by_setting = table.split("By setting, over the seeds")[1].splitlines()
    assert by_setting[2] == "| prior | objective | test/elbo |"
    assert by_setting[4] == "| normal | elbo | 100.50 ± 0.71 (n=2) |"
    assert by_setting[7] == "| mog | iwae | 210.50 ± 0.71 (n=2) |"
    # A run made twice with one seed is a repeat, not a second seed: said so (newcomer eight).
    path = sweep / "1" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": 0}))
    table = summarize(sweep)
    assert "By setting, over the seeds" not in table
    assert ("By setting, over the jobs; some of one setting share a seed, so their spread is "
            "not only the seeds' (mean ± standard deviation, n jobs):") in table


def test_single_runs_started_with_and_without_an_override_show_it_once(sweep):
    """Single runs compared (vae-summarize runs): one set model.latent=5 and
    model/likelihood=gaussian, the other ran the defaults; the latent and likelihood columns
    show both, and no model.latent or model/likelihood column repeats them (they did: a job
    without the override counted as another value)."""
    for num, (overrides, latent, likelihood) in enumerate(
            [(["model.latent=5", "model/likelihood=gaussian"], 5, "gaussian"),
             ([], 2, "bernoulli")]):
        (sweep / str(num)).mkdir(exist_ok=True)
        (sweep / str(num) / "results.json").write_text(json.dumps(
            {**JOBS[0], "latent": latent, "likelihood": likelihood, "overrides": overrides}))
    header = summarize(sweep).splitlines()[0]
    assert "| latent |" in header and "| likelihood |" in header
    assert "model.latent" not in header and "model/likelihood" not in header, header


def test_overrides_that_change_no_number_shown_get_no_column(sweep):
    """Single runs compared that differ in how they were watched or logged (the bar, the
    logger, the figures) get no column for those: a newcomer's 20 runs gave 44 columns."""
    settings = [("1", "csv", "true", "100"), ("4", "wandb", "false", "1000")]
    for num, (beta, logger, bar, points) in enumerate(settings):
        (sweep / str(num)).mkdir(exist_ok=True)
        (sweep / str(num) / "results.json").write_text(json.dumps(
            {**JOBS[0], "test/elbo": 100.0 * float(beta),
             "overrides": [f"model.objective.beta={beta}", f"logger={logger}",
                           f"trainer.enable_progress_bar={bar}",
                           f"callbacks.bound_curve.max_points={points}",
                           f"hydra.run.dir=runs/{num}"]}))
    header = summarize(sweep).splitlines()[0]
    assert "model.objective.beta" in header
    for inert in ("logger", "enable_progress_bar", "max_points", "hydra"):
        assert inert not in header, header


def test_a_fitted_prior_s_bound_and_the_sample_quality_are_columns(sweep):
    """A VQ-VAE is compared by its bound under the prior fitted after training (its eval/iw is
    under the uniform code prior), a family's samples by FID, KID, precision and recall: the
    eval.json holds them and the table shows them (it left them out)."""
    (sweep / "0" / "eval.json").write_text(json.dumps(
        {**EVAL, "fitted_prior": {"sampler": "pixelcnn", "elbo": {"nats": -160.0,
                                                                  "nats_se": 1.25}},
         "sample_quality": {"fid": 256.9, "kid": {"mean": 0.125, "std": 0.01},
                            "precision": 0.634, "recall": 0.033, "features": "classifier"}}))
    table = summarize(sweep).splitlines()
    assert table[0].endswith("| eval/fitted_prior | eval/fitted_elbo | eval/fitted_elbo_se | "
                             "eval/fid | eval/kid | eval/precision | eval/recall |")
    assert table[3].endswith("| pixelcnn | -160.00 | 1.25 | 256.90 | 0.12 | 0.63 | 0.03 |")
    (sweep / "0" / "eval.json").write_text(json.dumps(
        {**EVAL, "sample_quality": {"fid": "low"}}))
    with pytest.raises(SummaryError, match="sample_quality.fid='low' is not allowed"):
        summarize(sweep)


def test_jobs_evaluated_at_another_k_or_on_other_points_are_named(sweep):
    """A later vae-eval of some jobs (FID at a cheap k) replaced their eval.json: the table mixed
    k = 10 on 500 points with k = 100 on 1000, seen only in two columns. A note names them."""
    (sweep / "0" / "eval.json").write_text(json.dumps({**EVAL, "k": 100, "n": 1000}))
    (sweep / "1" / "eval.json").write_text(json.dumps({**EVAL, "k": 10, "n": 500}))
    table = summarize(sweep)
    assert ("Note: the jobs' eval/iw were computed alike only within each group (k=10, n=500, "
            "test: jobs 1; k=100, n=1000, test: jobs 0)") in table
    (sweep / "1" / "eval.json").write_text(json.dumps({**EVAL, "k": 100, "n": 1000}))
    assert "Note:" not in summarize(sweep)


def test_the_rows_sort_best_first_by_a_column(sweep, capsys):
    """--sort eval/iw: the highest log p(x) first, the jobs without one last; --sort eval/fid:
    the lowest first; a column the table lacks is one error naming its columns, exit code 2."""
    for num, (iw, fid) in enumerate([(-90.0, 30.0), (-85.0, 50.0), (None, 10.0)]):
        (sweep / str(num)).mkdir(exist_ok=True)
        (sweep / str(num) / "results.json").write_text(json.dumps(JOBS[0]))
        (sweep / str(num) / "eval.json").write_text(json.dumps(
            {**EVAL, "iw": {"nats": iw, "nats_se": 1.0}, "sample_quality": {"fid": fid}}))
    jobs = [line.split(" | ")[0] for line in summarize(sweep, "eval/iw").splitlines()[2:5]]
    assert jobs == ["| 1", "| 0", "| 2"]
    jobs = [line.split(" | ")[0] for line in summarize(sweep, "eval/fid").splitlines()[2:5]]
    assert jobs == ["| 2", "| 0", "| 1"]
    assert main([str(sweep), "--sort", "eval/fid"]) == 0
    capsys.readouterr()
    assert main([str(sweep), "--sort", "eval/nll"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sort eval/nll: the table has no such column; its columns: "
                          "job, data, latent") and "eval/iw" in err
