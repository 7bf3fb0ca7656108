"""Hostile round fifteen (/work/notes/hostile15.md): each test fails on the code before its fix."""

from __future__ import annotations

import json

import pytest
from compose import run_eval
from test_evaluate import _Killed, _killed_after, _same_estimates
from test_evaluate import checkpoint as frey_checkpoint  # noqa: F401 (a fixture)
from test_hostile import no_traceback, run
from test_sample_quality import QUALITY, classifier, mnist_run  # noqa: F401 (fixtures)

from vae_lightning import cli
from vae_lightning import sample_quality as sq
from vae_lightning.reports import summarize


def _with_classifier(mnist_run, classifier):  # noqa: F811 (the fixtures)
    root, path = mnist_run
    sq.save_classifier(sq.classifier_path(root, "mnist"), classifier, data="mnist",
                       test_accuracy=0.99)
    return [f"ckpt_path={path}", f"eval.data_root={root}", *QUALITY]


def test_sample_quality_added_to_an_evaluation_of_one_point_prints_its_summary(
        mnist_run, classifier, tmp_path, monkeypatch, capsys):  # noqa: F811
    """An evaluation of one point (eval.limit=1) has no standard errors: NaN, which eval.json
    writes as null. eval.bounds=false read them back as None and the closing summary's
    `{nats_se:.3f}` ended the command in a TypeError traceback (exit 1), after the scores."""
    base = [*_with_classifier(mnist_run, classifier), "eval.limit=1", f"output_dir={tmp_path}"]
    first = run(cli.evaluate, base, monkeypatch, capsys, tmp_path)
    assert first.code == 0, first.err[-2000:]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["n"] == 1 and saved["iw"]["nats_se"] is None
    added = run(cli.evaluate, [*base, "eval.bounds=false", "eval.sample_quality=[fid]"],
                monkeypatch, capsys, tmp_path)
    no_traceback(added)
    assert added.code == 0, added.err[-2000:]
    assert f"test   iw: {saved['iw']['nats']:.3f} +- - nats" in added.out, added.out
    assert "test sample quality (200 samples" in added.out
    now = json.loads((tmp_path / "eval.json").read_text())
    assert now["iw"] == saved["iw"] and now["sample_quality"]["fid"] > 0


@pytest.mark.parametrize("change, words", [
    (lambda e: e.pop("bound_of"), "has no bound_of (expected what the estimates bound"),
    (lambda e: e["elbo"].update(nats_se="0.3"), "elbo.nats_se='0.3' is not allowed"),
    (lambda e: e.pop("latent"), "has no latent"),
], ids=["earlier-vae-eval", "edited", "no-latent"])
def test_an_evaluation_eval_bounds_false_cannot_show_is_refused_before_the_scores(
        change, words, mnist_run, classifier, tmp_path, monkeypatch, capsys):  # noqa: F811
    """eval.bounds=false took any eval.json with iw and elbo objects: one of an earlier
    vae-eval (no bound_of: written before 2026-12-04) or edited by hand was given the scores
    (computed for minutes to hours), written, and then the closing summary ended in a KeyError
    or TypeError traceback (exit 1). Now one line naming the file and the key, exit 2, before
    the scores, nothing written."""
    base = [*_with_classifier(mnist_run, classifier), f"output_dir={tmp_path}"]
    assert run(cli.evaluate, base, monkeypatch, capsys, tmp_path).code == 0
    path = tmp_path / "eval.json"
    earlier = json.loads(path.read_text())
    change(earlier)
    path.write_text(json.dumps(earlier))
    before = path.read_bytes()
    added = run(cli.evaluate, [*base, "eval.bounds=false", "eval.sample_quality=[fid]"],
                monkeypatch, capsys, tmp_path)
    no_traceback(added)
    assert added.code == 2, added
    assert words in added.err and str(path) in added.err, added.err
    assert "leave eval.bounds true" in added.err
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.glob("eval*.json")) \
        == ["eval.json"]


class _Bound:
    def __init__(self, x):  # a stand-in bound per point: its pixels' sum, known exactly
        self.elbo = -x.flatten(1).sum(1)


def test_the_fitted_prior_s_bound_added_to_an_evaluation_is_of_its_points(
        mnist_run, classifier, tmp_path, monkeypatch, capsys):  # noqa: F811
    """eval.bounds=false eval.fitted_prior=pixelcnn scored the fitted prior's bound on the
    points of this command's eval.limit (the whole split by default) and wrote it beside the
    bounds of the earlier evaluation's n points (eval.limit=10): 300 points' bound beside 10
    points' as one evaluation, no word (eval.json has no n of its own for it). Now refused,
    naming eval.limit; with the earlier's eval.limit it is the bound of the same points."""
    from vae_lightning import pixelcnn

    # The PixelCNN prior needs a VQ-VAE and a fit: stand-ins score a known bound per point.
    monkeypatch.setattr(pixelcnn, "fitted_prior", lambda ckpt_path, model: object())
    monkeypatch.setattr(pixelcnn, "prior_bound", lambda model, prior, x: _Bound(x))
    base = [*_with_classifier(mnist_run, classifier), f"output_dir={tmp_path}"]
    assert run(cli.evaluate, base, monkeypatch, capsys, tmp_path).code == 0  # eval.limit=10
    path = tmp_path / "eval.json"
    before = path.read_bytes()
    asked = [*base, "eval.limit=null", "eval.bounds=false", "eval.fitted_prior=pixelcnn"]
    refused = run(cli.evaluate, asked, monkeypatch, capsys, tmp_path)
    no_traceback(refused)
    assert refused.code == 2, refused
    assert "is of another n 10 (this one: 300)" in refused.err, refused.err
    assert "give eval.limit=10" in refused.err
    assert path.read_bytes() == before
    added = run(cli.evaluate, [*asked, "eval.limit=10"], monkeypatch, capsys, tmp_path)
    assert added.code == 0, added.err[-2000:]
    now = json.loads(path.read_text())
    # The bound of the same 10 points as one evaluation with the bounds scores it.
    whole = tmp_path / "whole"
    assert run(cli.evaluate, [*base, f"output_dir={whole}", "eval.fitted_prior=pixelcnn"],
               monkeypatch, capsys, tmp_path).code == 0
    together = json.loads((whole / "eval.json").read_text())
    assert now["n"] == together["n"] == 10 and now["iw"] == together["iw"]
    assert now["fitted_prior"] == together["fitted_prior"]
    assert now["fitted_prior"]["elbo"]["nats"] < -1  # the stand-in's: minus the pixels' sum


def _sweep(root, jobs):
    """A sweep folder of jobs (overrides, seed, test/elbo, eval.json's sample_quality)."""
    for i, (overrides, seed, elbo, quality) in enumerate(jobs):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "results.json").write_text(json.dumps(
            {"status": "completed", "latent": 2, "seed": seed, "overrides": overrides,
             "test/elbo": elbo}))
        (root / str(i) / "eval.json").write_text(json.dumps(
            {"split": "test", "k": 10, "n": 100, "iw": {"nats": elbo + 3, "nats_se": 0.5},
             "sample_quality": quality}))
    return root


def _quality(fid, features="classifier", samples=10000):
    return {"fid": fid, "features": features, "generated": samples, "real": samples,
            **({"classifier": "/data/feature_classifiers/mnist.pt"}
               if features == "classifier" else {"inception_weights": "/w/pt_inception.pth"})}


def test_vae_summarize_names_fid_computed_in_other_feature_spaces_or_from_other_counts(
        tmp_path):
    """FID (and KID, precision, recall) of jobs evaluated with the data's classifier and with
    Inception, or from 1,000 and from 10,000 samples, stood in one column and --sort eval/fid
    ordered them as one scale, without a word (the note on unlike evaluations named only k, n and
    split): the numbers are of different spaces (and FID's bias falls as the count grows)."""
    root = _sweep(tmp_path / "sweep", [
        (["seed=1"], 1, -100.0, _quality(30.0)),
        (["seed=2"], 2, -101.0, _quality(3.0, "inception")),
        (["seed=3"], 3, -102.0, _quality(40.0, samples=1000)),
        (["seed=4"], 4, -103.0, _quality(31.0))])
    table = summarize.summarize(root, sort="eval/fid")
    assert "sample-quality scores (eval/fid, eval/kid, eval/precision, eval/recall) were " \
           "computed alike only within each group" in table, table
    assert "classifier features (mnist.pt), 10000 samples against 10000 images: jobs 0, 3" \
        in table
    assert "inception features (pt_inception.pth), 10000 samples against 10000 images: jobs 1" \
        in table
    assert "1000 samples against 1000 images: jobs 2" in table
    # Alike, no note.
    alike = _sweep(tmp_path / "alike", [(["seed=1"], 1, -100.0, _quality(30.0)),
                                        (["seed=2"], 2, -101.0, _quality(31.0))])
    assert "sample-quality scores" not in summarize.summarize(alike)


def test_the_table_by_setting_shows_no_word_none_for_a_key_a_setting_leaves_unset(tmp_path):
    """Two seeds of the default and two of model.objective.beta=4: the table by setting showed
    the default's row as `| None | ...` (the main table shows an unset key as an empty cell)."""
    root = _sweep(tmp_path / "sweep", [
        (["seed=1"], 1, -100.0, _quality(30.0)), (["seed=2"], 2, -101.0, _quality(31.0)),
        (["seed=1", "model.objective.beta=4"], 1, -110.0, _quality(32.0)),
        (["seed=2", "model.objective.beta=4"], 2, -112.0, _quality(33.0))])
    table = summarize.summarize(root)
    by_setting = table[table.index("By setting"):]
    assert "None" not in by_setting, by_setting
    assert "|  | -100.50 ± 0.71 (n=2) |" in by_setting
    assert "| 4 | -111.00 ± 1.41 (n=2) |" in by_setting


@pytest.mark.parametrize("given, words", [
    ({"batch_size": 0}, "batch_size=0 is not allowed: expected an integer >= 1"),
    ({"allow_other_data": "no"}, "allow_other_data='no' is not allowed: expected true or false"),
    ({"data_root": 5}, "data_root=5 is not allowed: expected a string or a path or null"),
], ids=["batch_size", "allow_other_data", "data_root"])
def test_load_datamodule_names_its_own_bad_argument(given, words, mnist_run):  # noqa: F811
    """load_datamodule(path, batch_size=0) blamed the checkpoint ("Checkpoint ...: its data
    config cannot be built: eval_batch_size=0"), a key the caller did not give;
    allow_other_data='no' (a true string) let other data through."""
    from vae_lightning import load_datamodule
    from vae_lightning.errors import ConfigError

    root, path = mnist_run
    with pytest.raises(ConfigError) as err:
        load_datamodule(path, **{"data_root": str(root), **given})
    assert str(err.value) == f"{words} (vae_lightning.load_datamodule).", err.value
    data = load_datamodule(path, data_root=root, batch_size=7)  # a path object, a good size
    assert next(iter(data.test_dataloader()))[0].shape[0] == 7


@pytest.mark.parametrize("planted", ["folder", "dangling link", "link to a file"])
def test_an_eval_lock_that_is_no_lock_file_is_refused_in_one_line(
        planted, mnist_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A folder or a dangling link named eval.lock in the output directory ended vae-eval in an
    IsADirectoryError / FileNotFoundError traceback (exit 1); a link's target was opened with
    O_CREAT: a file the directory's content chose was created (or locked) elsewhere."""
    root, path = mnist_run
    out, target = tmp_path / "out", tmp_path / "elsewhere" / "chosen"
    out.mkdir()
    target.parent.mkdir()
    if planted == "folder":
        (out / "eval.lock").mkdir()
    else:
        if planted == "link to a file":
            target.write_text("kept")
        (out / "eval.lock").symlink_to(target)
    result = run(cli.evaluate, [f"ckpt_path={path}", f"eval.data_root={root}", "eval.k=2",
                                "eval.limit=10", f"output_dir={out}"], monkeypatch, capsys,
                 tmp_path)
    no_traceback(result)
    assert result.code == 2, result
    kind = "a directory" if planted == "folder" else "a symbolic link"
    assert (f"error: output_dir={out}: its eval.lock (the lock file a vae-eval holds while it "
            f"writes there) is {kind}, not a lock file; move it away") in result.err, result.err
    assert not (out / "eval.json").exists()
    assert (target.read_text() == "kept") if planted == "link to a file" else not target.exists()
    assert (out / "eval.lock").is_symlink() or (out / "eval.lock").is_dir()  # left as it was


def test_vae_summarize_names_the_jobs_that_left_no_results_json(tmp_path):
    """A sweep job killed outright (SIGKILL, the OOM killer) leaves its train.log, .hydra/ and
    perhaps checkpoints/, but no results.json: the table left it out without a word, as if the
    sweep had fewer jobs (the failed jobs' list names only those that wrote their status)."""
    root = _sweep(tmp_path / "sweep", [(["seed=1"], 1, -100.0, _quality(30.0))])
    (root / "1" / ".hydra").mkdir(parents=True)
    (root / "1" / "train.log").write_text("")  # killed before its first checkpoint
    (root / "2" / "checkpoints").mkdir(parents=True)  # killed later
    (root / "3" / "figures").mkdir(parents=True)  # no training job's folder: not named
    table = summarize.summarize(root)
    assert ("Jobs without a results.json (still running, or killed before they wrote one: "
            "SIGKILL, the OOM killer, a machine's end; see each one's train.log), not in the "
            "table: 1, 2.") in table, table
    assert "not in the table" in (root / "summary.md").read_text()
    complete = _sweep(tmp_path / "complete", [(["seed=1"], 1, -100.0, _quality(30.0))])
    assert "without a results.json" not in summarize.summarize(complete)


def test_eval_bounds_false_reads_the_bounds_under_the_directory_s_lock(
        mnist_run, classifier, tmp_path, monkeypatch, capsys):  # noqa: F811
    """eval.bounds=false read eval.json before taking the directory's eval.lock: a vae-eval
    that ended in between (its k = 5000 eval.json written, its lock released) had its bounds
    replaced by the ones read before (of the k it replaced), with the scores added to them."""
    import contextlib

    from vae_lightning import evaluate, rundir

    base = [*_with_classifier(mnist_run, classifier), f"output_dir={tmp_path}"]
    assert run(cli.evaluate, [*base, "eval.k=2"], monkeypatch, capsys, tmp_path).code == 0
    path = tmp_path / "eval.json"
    old = json.loads(path.read_text())
    newer = {**old, "k": 50, "iw": {**old["iw"], "nats": old["iw"]["nats"] + 1.0}}
    taken = rundir.evaluating

    @contextlib.contextmanager
    def ended_meanwhile(directory):  # the other vae-eval writes its eval.json and lets go
        rundir.write_json(path, newer)
        with taken(directory):
            yield

    monkeypatch.setattr(evaluate.rundir, "evaluating", ended_meanwhile)
    added = run(cli.evaluate, [*base, "eval.bounds=false", "eval.sample_quality=[fid]"],
                monkeypatch, capsys, tmp_path)
    assert added.code == 0, added.err[-2000:]
    now = json.loads(path.read_text())
    assert now["k"] == 50 and now["iw"] == newer["iw"], (now["k"], now["iw"])
    assert now["sample_quality"]["fid"] > 0


def test_a_pipe_in_a_record_s_words_keeps_the_readme_table_s_cells(tmp_path):
    """vae-bench page escaped a record's words in the page's table but not in the README's: a
    row or config with a `|` (a record is a file anyone may edit) split its README row into
    more cells than the header has."""
    from vae_lightning.reports import bench

    records = tmp_path / "records"
    records.mkdir()
    (records / "vae.json").write_text(json.dumps({
        "bench": {"row": "VAE | ours", "config": "bench/vae|x", "paper": None, "pythae": None},
        "iw": {"nats": -90.1, "nats_se": 0.3}, "elbo": {"nats": -95.0}, "latent": 50,
        "status": "completed", "k": 5000, "n": 10000, "active_units": 20}))
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{bench.BEGIN}\nold\n{bench.END}\nbottom\n")
    bench.page(records, tmp_path / "page.md", tmp_path / "nolong", readme)
    header, _, row = readme.read_text().splitlines()[2:5]
    cells = lambda line: line.replace("\\|", "").count("|")  # noqa: E731 (unescaped pipes)
    assert cells(row) == cells(header) == 7, row
    assert row.startswith("| VAE \\| ours (`bench/vae\\|x`) | -90.10 ± 0.30 |"), row


def test_a_stopped_evaluation_goes_on_when_its_data_folder_is_named_another_way(
        frey_checkpoint, tmp_path, monkeypatch, caplog):  # noqa: F811
    """A stopped vae-eval's batches are kept under a key holding where its data were found,
    with how (command line, run record, default): run again from where the run's record (or
    the default) finds the same folder that eval.data_root named (or the same path with a
    trailing slash), it said "holds no part of this evaluation ... starting over": hours of a
    k = 5000 estimate set aside for the same data. (Seen with vae-eval on MNIST: stopped with
    eval.data_root=/work/shared/data, run again without it.)"""
    from vae_lightning.data.datamodules import default_root

    base = [f"ckpt_path={frey_checkpoint}", "eval.k=20", "eval.chunk=8", "eval.device=cpu",
            "eval.batch_size=50"]
    whole = run_eval([*base, f"output_dir={tmp_path / 'whole'}"])
    out = tmp_path / "stopped"
    with monkeypatch.context() as patched:
        _killed_after(patched, 2)
        with pytest.raises(_Killed):
            run_eval([*base, f"output_dir={out}", f"eval.data_root={default_root()}/"])
    with caplog.at_level("INFO"):
        resumed = run_eval([*base, f"output_dir={out}"])
    assert "holds no part of this evaluation" not in caplog.text, caplog.text
    assert "after its first 2 batches" in caplog.text
    _same_estimates(resumed, whole)
    assert sorted(p.name for p in out.iterdir()) == ["eval.json"]


@pytest.mark.parametrize("extra", [[], ["--eval-override", "eval.sample_quality=[fid]"]],
                         ids=["alone", "with-fid"])
def test_vae_bench_refuses_an_eval_override_that_skips_the_row_s_bounds(extra, tmp_path, capsys,
                                                                        monkeypatch):
    """`vae-bench run vae --eval-override eval.bounds=false` started the row's training (hours)
    and only its evaluation then refused (nothing else asked, or no eval.json to add to); with
    an earlier eval.json in the row's folder (another k, a quick run's) the record would be of
    bounds this run never estimated. Now refused before any row trains."""
    from vae_lightning.reports import bench

    def trained(*args, **kwargs):
        raise AssertionError("the row was run")

    monkeypatch.setattr(bench, "run", trained)
    code = bench.main(["run", "vae", "--runs", str(tmp_path / "runs"), "--records",
                       str(tmp_path / "records"), "--eval-override", "eval.bounds=false",
                       *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: --eval-override eval.bounds=false: vae-bench sets eval.bounds "
                          "itself (true: a record is of the bounds its row's evaluation "
                          "estimates"), err
    assert not (tmp_path / "runs").exists()


def test_scores_added_one_kind_after_another_are_kept_together(
        mnist_run, classifier, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Left by round fifteen: eval.bounds=false with KID after FID replaced the sample-quality
    scores, so eval.json lost the FID (kept aside only in the replaced file) and vae-summarize's
    FID column emptied. Scores of the same samples and features are added together; other
    settings (another number of samples) replace them."""
    base = [*_with_classifier(mnist_run, classifier), f"output_dir={tmp_path}"]
    assert run(cli.evaluate, base, monkeypatch, capsys, tmp_path).code == 0
    for kind in ("fid", "kid"):
        added = run(cli.evaluate, [*base, "eval.bounds=false", f"eval.sample_quality=[{kind}]"],
                    monkeypatch, capsys, tmp_path)
        assert added.code == 0, added.err[-2000:]
    quality = json.loads((tmp_path / "eval.json").read_text())["sample_quality"]
    assert quality["fid"] > 0 and quality["kid"]["mean"] is not None
    other = run(cli.evaluate, [*base, "eval.bounds=false", "eval.sample_quality=[kid]",
                               "eval.samples=100"], monkeypatch, capsys, tmp_path)
    assert other.code == 0, other.err[-2000:]
    quality = json.loads((tmp_path / "eval.json").read_text())["sample_quality"]
    assert "fid" not in quality and quality["generated"] == 100
