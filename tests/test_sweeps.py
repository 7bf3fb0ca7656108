"""Sweeps on Hydra's launchers and sweepers: a failing job never stops a sweep, joblib jobs share
the cores, submitit's local launcher (the stand-in for SLURM), Optuna's study resumed from
SQLite, and the debug and rich presets."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from compose import REPO, compose_train, open_paths
from test_hostile import run

from vae_lightning import cli
from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.reports.summarize import summarize
from vae_lightning.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures=null", "logger=none"]
TINY = ["model.latent=2", "model.encoder.net.hidden=[16]", "model.decoder.net.hidden=[16]",
        "trainer.max_epochs=1", *QUIET]


def _sweep(args, sweep_dir, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args,
                           f"hydra.sweep.dir={sweep_dir}"], cwd=sweep_dir.parent,
                          capture_output=True, text=True, timeout=timeout)


def _sweep_here(args, sweep_dir, monkeypatch, capsys):
    """The sweep ``vae-train <args>`` in this process (test_hostile.run): Hydra's basic launcher
    and the Optuna sweeper run their jobs in the process that launches them."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    return run(cli.train, [*args, f"hydra.sweep.dir={sweep_dir}"], monkeypatch, capsys,
               sweep_dir.parent)


def _joblib_sweep_here(args, sweep_dir, monkeypatch, capsys):
    """``_sweep_here`` with ``hydra/launcher=joblib`` and two jobs at once; joblib's (loky)
    worker processes, which run the jobs, are shut down afterwards."""
    from joblib.externals.loky import get_reusable_executor

    try:
        return _sweep_here([*args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                           sweep_dir, monkeypatch, capsys)
    finally:
        get_reusable_executor().shutdown(wait=True)


def _results(sweep_dir):
    return {path.parent.name: json.loads(path.read_text())
            for path in sorted(sweep_dir.glob("*/results.json"))}


def test_a_diverging_job_does_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    proc = _sweep_here(["-m", *TINY, "trainer.max_epochs=2",
                        "model.optimizer.lr=0.001,1e6,0.001"], sweep, monkeypatch, capsys)
    assert proc.code == 5, proc.err[-3000:]
    assert "Traceback" not in proc.err
    results = _results(sweep)
    assert sorted(results) == ["0", "1", "2"]
    assert results["0"]["status"] == results["2"]["status"] == "completed"
    assert results["1"]["status"] in ("diverged", "nonfinite")
    assert results["1"]["val/elbo" if results["1"]["status"] == "diverged" else "message"]
    last = proc.out.strip().splitlines()[-1]
    assert "3 jobs: 2 completed, 1 " in last and "job 1 (" in last
    table = summarize(sweep)
    assert "| completed |" in table and "Failed jobs:" in table and "- job 1:" in table


def _vectors(tmp_path):
    """A data=array file of 60 4 x 4 images in [0, 1], and a path beside it with no file:
    data.path's values for a job that trains and one that fails on its missing data (an error
    found as the job builds its data, which no check of the sweep's configs finds first)."""
    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(0).random((60, 4, 4), dtype=np.float32))
    return data, tmp_path / "missing.npy"


def test_a_job_with_bad_input_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    sweep, (data, missing) = tmp_path / "sweep", _vectors(tmp_path)
    proc = _sweep_here(["-m", *TINY, "data=array", f"data.path={missing},{data}"], sweep,
                       monkeypatch, capsys)
    assert proc.code == 5, proc.err[-3000:]
    results = _results(sweep)
    assert results["0"]["status"] == "error" and results["0"]["exit_code"] == 2
    # the key, as everywhere: it said path='...'
    assert f"data.path={str(missing)!r} does not exist" in results["0"]["message"]
    assert f"data.path={missing}" in results["0"]["overrides"]
    assert results["1"]["status"] == "completed" and results["1"]["latent"] == 2
    # the job's message once on the console (its error line; the log's copy was printed too),
    # and in the job's log file
    assert (proc.out + proc.err).count(results["0"]["message"]) == 1
    assert results["0"]["message"] in (sweep / "0" / "train.log").read_text()
    assert "2 jobs: 1 completed, 1 error" in proc.out
    assert proc.out.count("2 jobs:") == 1 and "2 jobs:" not in proc.err  # once
    # Each job's directory lock ends with the job: a process that runs a thousand jobs (Optuna's
    # trials) does not hold a thousand descriptors.
    assert not [fd for fd in open_paths() if fd.startswith(str(sweep))]


@pytest.mark.parametrize("swept", [
    ["model.latent=2,-1", "model.encoder.net.hidden=[16],[0]"],
    # the basic sweeper's own search space, from a file of one's own (hydra.sweeper.params)
    ["hparams_search=grid"],
])
def test_a_sweep_with_a_job_its_checks_refuse_is_refused_before_any_job_trains(
        swept, tmp_path, monkeypatch, capsys):
    """``-m model.latent=2,-1``: the first job trained for its whole length before the second
    was refused for its value (a sweep of hours, a typo found at its end). Now every job's
    config is checked before the first starts, and every refused job is named with its values
    and its problems, in one error (exit code 2), nothing run."""
    sweep, folder = tmp_path / "sweep", tmp_path / "my_conf" / "hparams_search"
    folder.mkdir(parents=True)
    (folder / "grid.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.latent: 2,-1\n"
        "      model.encoder.net.hidden: '[16],[0]'\n")
    # the command line's values of a key replace the file's search: TINY's fixed ones left out
    tiny = [item for item in TINY if not item.startswith(("model.latent=", "model.encoder."))]
    proc = _sweep_here(["-m", *tiny, *swept, f"hydra.searchpath=[file://{folder.parent}]"],
                       sweep, monkeypatch, capsys)
    assert proc.code == 2, proc.err[-3000:]
    error = proc.err[proc.err.index("error: "):]
    assert error.startswith("error: 3 of the sweep's 4 jobs would be refused as they start; "
                            "nothing was run.") and "Traceback" not in proc.err
    # each problem once, with the jobs it is found in
    assert error.splitlines()[1:] == [
        "  - model.encoder.net.hidden=[0] is not allowed: expected a list of integers >= 1 "
        "(vae_lightning.nets.MLP). (jobs 1, 3)",
        "  - model.latent=-1 is not allowed: expected an integer >= 1 or null "
        "(vae_lightning.module.VAE). (jobs 2, 3)"]
    assert not list(sweep.glob("*/results.json")) and not (sweep / "0").exists()


def test_a_vae_eval_sweep_with_a_job_its_checks_refuse_is_refused_before_any_job_runs(
        tmp_path, monkeypatch, capsys):
    """The same for vae-eval: ``-m eval.k=3,-5`` estimated the first job's bounds, then refused
    the second."""
    from compose import train_briefly

    path = train_briefly(["data=frey", *TINY[:3]], tmp_path / "run", 1)[0]
    sweep = tmp_path / "sweep"
    proc = run(cli.evaluate, ["-m", f"ckpt_path={path}", "eval.k=3,-5", "eval.device=cpu",
                              f"hydra.sweep.dir={sweep}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2, proc.err[-2000:]
    assert proc.err[proc.err.index("error: "):].splitlines() == [
        "error: 1 of the sweep's 2 jobs would be refused as they start; nothing was run. "
        "Remove or correct their values:",
        "  - eval.k=-5 is not allowed: expected an integer >= 1 "
        "(vae_lightning.evaluate.Evaluation). (job 1: eval.k=-5)"]
    assert not sweep.exists()


def test_a_sweep_with_a_job_that_does_not_compose_is_one_error_line(tmp_path, monkeypatch,
                                                                   capsys, recwarn):
    """``-m data=frey,nosuch``: the check of the jobs' configs leaves a job that does not
    compose to Hydra's sweeper, which reports it in one line (the check's own composition
    failed first, in a warning of Hydra's callbacks with the whole search path)."""
    sweep = tmp_path / "sweep"
    proc = _sweep_here(["-m", *TINY, "data=frey,nosuch"], sweep, monkeypatch, capsys)
    assert proc.code == 2 and proc.err.startswith("error: In 'train': Could not find "
                                                  "'data/nosuch'"), proc.err[-2000:]
    assert len(proc.err.strip().splitlines()) == 1 and not (sweep / "0").exists()
    assert not [w for w in recwarn if "Preflight" in str(w.message)]


def _an_earlier_failed_sweep(tmp_path, monkeypatch, capsys):
    """A sweep of one job that failed (its data missing) after its first checkpoint (a
    checkpoints/ folder: a run there to resume), its directory dated an hour ago: the sweep
    directory and the job's results.json, and the job's overrides."""
    sweep, (_, missing) = tmp_path / "sweep", _vectors(tmp_path)
    job = ["data=array", f"data.path={missing}"]
    first = _sweep_here(["-m", *TINY, *job], sweep, monkeypatch, capsys)
    assert first.code == 5 and "1 jobs: 1 error" in first.out
    (sweep / "0" / "checkpoints").mkdir()
    before = (sweep / "0" / "results.json").read_text()
    os.utime(sweep / "0", (time.time() - 3600,) * 2)  # an earlier sweep's (an hour ago)
    return sweep, before, job


def test_a_job_that_failed_before_its_first_checkpoint_runs_again_with_its_sweep(
        tmp_path, monkeypatch, capsys):
    """Jobs that failed on missing data left their results.json and nothing to resume: once the
    data are there, the same sweep command runs them in their directories. They were refused
    as holding a run, and ckpt_path=last then found nothing to resume: each message sent the
    user to the other (newcomer walkthrough eight). A job that completed is still refused when
    the sweep runs again, and left as it was."""
    sweep, data = tmp_path / "sweep", tmp_path / "images.npy"
    command = ["-m", *TINY, "data=array", f"data.path={data}", "model.latent=2,3"]
    first = _sweep_here(command, sweep, monkeypatch, capsys)
    assert first.code == 5 and "2 jobs: 2 error" in first.out, first.out[-2000:]
    assert not (sweep / "0" / "checkpoints").exists()
    np.save(data, np.random.default_rng(0).random((60, 4, 4), dtype=np.float32))
    again = _sweep_here(command, sweep, monkeypatch, capsys)
    assert again.code == 0, again.err[-2000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "results.json").read_text())["status"] == "completed"
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    kept = (sweep / "0" / "results.json").read_text()
    third = _sweep_here(command, sweep, monkeypatch, capsys)
    assert third.code == 5 and "already holds a run" in third.err
    assert (sweep / "0" / "results.json").read_text() == kept


def test_a_sweep_whose_jobs_are_refused_in_an_earlier_sweep_s_directories_fails(
        tmp_path, monkeypatch, capsys):
    """The same sweep again into its hydra.sweep.dir: each job is refused (its directory holds
    the earlier run, left as it was), and the sweep said "0 jobs: none" with exit code 0."""
    sweep, before, job = _an_earlier_failed_sweep(tmp_path, monkeypatch, capsys)
    again = _sweep_here(["-m", *TINY, *job], sweep, monkeypatch, capsys)
    assert again.code == 5, again.out[-2000:]
    assert again.out.strip().splitlines()[-1] == (f"sweep {sweep}: 1 jobs: 1 error; failed: "
                                                  "job 0 (error)")
    assert "already holds a run" in again.err
    # The sweep's directory is named, and hydra.sweep.dir to change: hydra.run.dir plays no
    # part in a sweep (newcomer walkthrough eleven).
    assert f"hydra.sweep.dir={sweep})" in again.err and "choose another hydra.sweep.dir" \
        in again.err and "hydra.run.dir" not in again.err
    assert (sweep / "0" / "results.json").read_text() == before


def test_jobs_refused_under_joblib_are_counted_as_the_sweep_s_failures(tmp_path, monkeypatch,
                                                                      capsys):
    """As above, with the jobs in joblib's worker processes: the note of each refused job was
    kept in the worker's memory, so the sweep (in this process) said "0 jobs: none" and exited
    with 0. Now the note is a file in the sweep directory, and the count names the job."""
    sweep, before, (data, path) = _an_earlier_failed_sweep(tmp_path, monkeypatch, capsys)
    again = _joblib_sweep_here(["-m", *TINY, data, f"{path},{path.split('=', 1)[1]}"], sweep,
                               monkeypatch, capsys)
    assert again.code == 5, again.out[-2000:]
    assert again.out.strip().splitlines()[-1] == (
        f"sweep {sweep}: 2 jobs: 2 error; failed: job 0 (error), job 1 (error)")
    assert (sweep / "0" / "results.json").read_text() == before
    assert json.loads((sweep / "1" / "results.json").read_text())["status"] == "error"
    assert not (sweep / ".job-status").exists()


def test_a_sweep_resumed_where_its_jobs_are_complete_succeeds(tmp_path, monkeypatch, capsys):
    """The sweep run again with ckpt_path=last after its jobs completed: each job is left as it
    was with a note (as a single run's resume, exit code 0), and the sweep said "The job failed
    (error, exit code 0)", counted "1 error" and exited with code 5."""
    sweep = tmp_path / "sweep"
    first = _sweep_here(["-m", *TINY], sweep, monkeypatch, capsys)
    assert first.code == 0, first.err[-2000:]
    before = (sweep / "0" / "results.json").read_text()
    again = _sweep_here(["-m", *TINY, "ckpt_path=last"], sweep, monkeypatch, capsys)
    assert again.code == 0, again.out[-2000:] + again.err[-2000:]
    assert "note: The run of" in again.err and "is complete" in again.err
    assert "failed" not in again.err
    assert again.out.strip().splitlines()[-1] == f"sweep {sweep}: 1 jobs: 1 completed"
    assert (sweep / "0" / "results.json").read_text() == before


def test_joblib_runs_two_jobs_at_once_sharing_the_cores(tmp_path, monkeypatch, capsys):
    """The sweep is launched from this process; joblib's (loky) workers that run its jobs are
    processes of their own, shut down at the end."""
    sweep = tmp_path / "sweep"
    proc = _joblib_sweep_here(["-m", *TINY, "model.latent=2,3"], sweep, monkeypatch, capsys)
    assert proc.code == 0, proc.err[-3000:]
    results = _results(sweep)
    assert sorted(r["latent"] for r in results.values()) == [2, 3]
    cores = len(os.sched_getaffinity(0))
    assert all(r["threads"] == max(1, cores // 2) for r in results.values())
    assert "2 jobs: 2 completed" in proc.out


def test_sigterm_to_a_joblib_sweep_says_how_to_resume_each_job_that_trained(tmp_path,
                                                                           monkeypatch, capsys):
    """joblib's workers run the jobs; SIGTERM to the sweep's process stops them (joblib ends its
    workers). Each job that trained keeps its last checkpoint, and its results.json gives the
    command that resumes it (before: "nothing more was written. Run the command again", for
    the sweep and every job)."""
    sweep = tmp_path / "sweep"
    args = [sys.executable, str(REPO / "train.py"), "-m", *TINY, "trainer.max_epochs=1000",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.latent=2,3",
            f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lasts = [sweep / job / "checkpoints" / "last.ckpt" for job in ("0", "1")]
    deadline = time.time() + 300
    while not all(last.exists() for last in lasts) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip() == ("error: Stopped by SIGTERM; each job of the sweep that had trained "
                           "keeps its last checkpoint, and its results.json says how to resume it.")
    assert out.strip().splitlines()[-1].startswith(f"sweep {sweep}: 2 jobs: 2 interrupted")
    results = _results(sweep)
    for job, last in zip(("0", "1"), lasts):
        assert (results[job]["status"], results[job]["exit_code"]) == ("interrupted", 143)
        message = results[job]["message"]
        assert message.startswith("Stopped by SIGTERM; the state after the latest epoch is in "
                                  f"{last}. Resume with: vae-train "), message
        assert message.endswith(f" ckpt_path={last}.")
        assert f"model.latent={2 + int(job)}" in message.split()
    # The command resumes the job in its directory (here for two more epochs).
    # As a shell reads it (an override of brackets is quoted: the shell would glob it).
    command = shlex.split(results["0"]["message"].split("Resume with: vae-train ")[1]
                          .rstrip("."))
    epoch = read_checkpoint(lasts[0])["epoch"]
    command = [a for a in command if not a.startswith("trainer.max_epochs=")]
    resumed = run(cli.train, [*command, f"trainer.max_epochs={epoch + 2}"], monkeypatch, capsys,
                  tmp_path)
    assert resumed.code == 0, resumed.err[-3000:]
    assert (_results(sweep)["0"]["status"], _results(sweep)["0"]["epochs"]) == ("completed",
                                                                                 epoch + 2)


def test_joblib_n_jobs_zero_is_one_line_before_the_sweep(tmp_path, monkeypatch, capsys):
    """joblib rejects n_jobs = 0 only when the jobs are dispatched, with a traceback; the sweep
    refuses it first, naming the key and what it accepts, and creates nothing."""
    sweep = tmp_path / "sweep"
    proc = _sweep_here(["-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=0",
                        "model.latent=2,3"], sweep, monkeypatch, capsys)
    assert proc.code == 2 and "Traceback" not in proc.err
    assert proc.err.strip().startswith("error: hydra.launcher.n_jobs=0 is not allowed: ")
    assert "(-1: one job per core" in proc.err and not sweep.exists()


@pytest.mark.parametrize("n_jobs, expected", [(3, lambda cores: 3), (-1, lambda cores: cores),
                                              (-2, lambda cores: max(1, cores - 1)),
                                              (-1000, lambda cores: 1)])
def test_the_jobs_at_once_follow_joblib_s_rule_for_n_jobs(n_jobs, expected):
    """Negative n_jobs count back from the cores (joblib: cores + 1 + n_jobs): the threads each
    job takes are the cores over that many jobs (before, any n_jobs < 1 counted as one job per
    core: -3 on four cores ran two jobs of one thread each, and two cores stayed idle)."""
    from vae_lightning.sweeps import available_cores, parallel_jobs, share_of_cores

    cores = available_cores()
    assert parallel_jobs(n_jobs) == expected(cores)
    assert share_of_cores(parallel_jobs(n_jobs)) == max(1, cores // expected(cores))


@pytest.mark.slow  # a long sweep: `pytest -m slow`
def test_joblib_jobs_sharing_the_machine_give_the_numbers_of_the_same_runs_alone(tmp_path):
    """Jobs that share the cores (or a GPU) concurrently must not change each other's numbers:
    same seed, same curve and results as the run alone, to float tolerance (the jobs' matrix
    products run on fewer threads, which may reorder their sums)."""
    args = [*TINY, "trainer.max_epochs=2", "callbacks.bound_curve.start=300"]
    sweep = tmp_path / "sweep"
    proc = _sweep(["-m", *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "model.latent=2,3"], sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, latent in (("0", 2), ("1", 3)):
        alone = tmp_path / f"alone{latent}"
        run = subprocess.run([sys.executable, str(REPO / "train.py"), *args,
                              f"model.latent={latent}", f"hydra.run.dir={alone}"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        shared_results = json.loads((sweep / job / "results.json").read_text())
        alone_results = json.loads((alone / "results.json").read_text())
        assert shared_results["latent"] == alone_results["latent"] == latent
        assert shared_results["train_samples_seen"] == alone_results["train_samples_seen"]
        for key in ("val/elbo", "test/elbo", "train/elbo"):
            assert shared_results[key] == pytest.approx(alone_results[key], rel=1e-5), key
        shared = json.loads((sweep / job / "curve.json").read_text())["points"]
        alone_points = json.loads((alone / "curve.json").read_text())["points"]
        assert len(shared) == len(alone_points) >= 3
        for a, b in zip(shared, alone_points):
            assert a.keys() == b.keys() and a["samples_seen"] == b["samples_seen"]
            for key in a.keys() - {"samples_seen"}:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a, b)


@pytest.mark.slow  # a long sweep: `pytest -m slow`
def test_submitit_local_runs_the_jobs_as_slurm_would(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(["-m", *TINY, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                   "model.latent=2,3"], sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _results(sweep)
    assert sorted(r["latent"] for r in results.values()) == [2, 3]
    assert all(r["status"] == "completed" for r in results.values())
    assert any((sweep / ".submitit").iterdir())  # submitit's job records and logs


@pytest.mark.slow  # a long sweep: `pytest -m slow`
def test_optuna_search_resumes_its_study_from_sqlite(tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "search"
    for trials in (3, 2):
        proc = _sweep(["hparams_search=optuna", f"hydra.sweeper.n_trials={trials}", *TINY[1:]],
                      sweep)  # model.latent left to the search
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"{trials} jobs: {trials} completed" in proc.stdout
    study = optuna.load_study(study_name="vae", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert set(study.trials[0].params) == {"model.optimizer.lr", "model.latent"}
    values = [t.value for t in study.trials]
    results = _results(sweep)
    assert sorted(r["val/elbo"] for r in results.values()) == pytest.approx(sorted(values))
    assert len(results) == 5  # the resumed trials ran in directories of their own
    # The best trial's directory is named (Optuna's lines give its settings only), where it
    # ran: in this run of the study or an earlier one (newcomer walkthrough twelve).
    best = next(job for job, r in results.items() if r["val/elbo"] == study.best_value)
    assert (f"The study's best trial (val/elbo={study.best_value:g}) ran in {sweep / best}: "
            f"vae-export {sweep / best} model.ckpt") in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow  # a long sweep: `pytest -m slow`
def test_optuna_optimises_the_optimized_metric(tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "search"
    proc = _sweep(["hparams_search=optuna", "hydra.sweeper.n_trials=2",
                   "optimized_metric=test/elbo", *TINY[1:]], sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="vae", storage=f"sqlite:///{sweep / 'optuna.db'}")
    values = sorted(t.value for t in study.trials)
    results = _results(sweep).values()
    assert values == pytest.approx(sorted(r["test/elbo"] for r in results))
    assert values != pytest.approx(sorted(r["val/elbo"] for r in results))


def test_optuna_records_a_diverged_trial_as_failed(tmp_path, monkeypatch, capsys):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "search"
    proc = _sweep_here(["hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY,
                        "trainer.max_epochs=2",
                        "model.optimizer.lr=choice(0.001,0.002,1000000.0)"], sweep,
                       monkeypatch, capsys)
    assert (sweep / "optuna.db").is_file(), proc.err[-3000:]
    study = optuna.load_study(study_name="vae", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = {t.params["model.optimizer.lr"]: t.state.name for t in study.trials}
    values = [t.value for t in study.trials if t.state.name == "COMPLETE"]
    assert all(v == v for v in values)  # no NaN reached the study
    assert states.get(1e6, "FAIL") == "FAIL"
    assert proc.code == (5 if 1e6 in states else 0), proc.err[-3000:]
    assert "Traceback" not in proc.err
    best = next(job for job, r in _results(sweep).items() if r["val/elbo"] == study.best_value)
    assert f"The study's best trial (val/elbo={study.best_value:g}) ran in {sweep / best}" \
        in proc.out, proc.out[-2000:]  # where it ran, beside Optuna's settings


@pytest.mark.parametrize("preset", ["fast_dev_run", "overfit", "limit", "profiler"])
def test_debug_presets_run(preset, tmp_path):
    quiet = [q for q in QUIET if preset != "fast_dev_run" or "figures" not in q]  # it has none
    cfg = compose_train([f"debug={preset}", *TINY[:3], *quiet, "trainer.max_epochs=2"]
                        if preset == "overfit" else [f"debug={preset}", *TINY[:3], *quiet],
                        tmp_path)
    results = train(cfg)
    if preset == "fast_dev_run":  # a check of the code path: not a run's results
        assert results["steps"] == 1 and not (tmp_path / "results.json").exists()
    else:
        assert results["status"] == "completed"
    if preset == "limit":
        assert results["steps"] == 3  # a tenth of Frey's 16 batches (one), 3 epochs


@pytest.mark.parametrize("preset", ["default", "fast_dev_run", "overfit", "limit", "profiler"])
def test_debug_runs_are_kept_apart_from_the_real_runs(preset):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hydra = compose("train", [f"debug={preset}"], return_hydra_config=True).hydra
    assert hydra.run.dir.startswith("outputs/debug/")
    assert hydra.sweep.dir.startswith("multirun/debug/")


def test_overfit_serves_the_same_batches_every_epoch(tmp_path):
    import lightning as L

    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.current_epoch, batch[0].sum().item()))

    from vae_lightning.train import build_run

    run = build_run(compose_train(["debug=overfit", *TINY[:3], "trainer.max_epochs=3"], tmp_path))
    trainer = L.Trainer(overfit_batches=2, max_epochs=3, logger=False, callbacks=[Record()],
                        enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, limit_val_batches=0)
    trainer.fit(run.model, datamodule=run.datamodule)
    by_epoch = [[s for e, s in seen if e == epoch] for epoch in range(3)]
    assert len(by_epoch[0]) == 2 and by_epoch[0] == by_epoch[1] == by_epoch[2]


def test_rich_callbacks_print_the_config_tree(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    proc = run(cli.train, ["callbacks=rich", *TINY[:4], "logger=none",
                           f"hydra.run.dir={run_dir}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-3000:]
    assert "config" in proc.out and "encoder" in proc.out and "latent: 2" in proc.out
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"


def test_a_results_json_or_curve_that_does_not_parse_leaves_the_failure_reported(tmp_path):
    """record_failure (a resumed run stopped by a signal or a NaN, a failed job) and the sweep's
    count read the earlier results.json and curve.json with json.loads: one that did not parse
    (cut short by a full disk) was a JSONDecodeError traceback in place of the failure's own
    line and exit code. Now an unreadable results.json is kept as it is (and counted as
    "unreadable"), and an unreadable curve gives no points."""
    from vae_lightning import sweeps

    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "results.json").write_text('{"status": "interr')
    (job / "curve.json").write_text("[not json")
    assert sweeps.record_failure(job, "interrupted", "stopped", 143,
                                 replace_failures=True) is None
    assert (job / "results.json").read_text() == '{"status": "interr'
    line, failed = sweeps.summary(sweeps._Sweep(tmp_path / "sweep", 0.0))
    assert failed and line == (f"sweep {tmp_path / 'sweep'}: 1 jobs: 1 unreadable; failed: "
                               "job 0 (unreadable)")
    (job / "results.json").write_text(json.dumps({"status": "interrupted", "message": "x"}))
    written = sweeps.record_failure(job, "nonfinite", "NaN at step 3", 3, replace_failures=True)
    assert json.loads(written.read_text()) == {"status": "nonfinite", "message": "NaN at step 3",
                                               "exit_code": 3, "curve": []}


def test_an_optuna_trial_of_a_complete_run_gets_the_run_s_value(tmp_path, monkeypatch):
    """A sweep's job whose run is already complete (resumed with ckpt_path=last) returns the
    optimized metric its results.json records, not None, which Optuna counts as a failed
    trial; None where the file has no such number."""
    from omegaconf import OmegaConf

    from vae_lightning import cli
    from vae_lightning import sweeps as sweeps_module
    from vae_lightning.errors import NothingToDo

    monkeypatch.setattr(sweeps_module, "in_sweep", lambda: True)
    monkeypatch.setattr(sweeps_module, "note_job", lambda *args, **kwargs: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"status": "completed",
                                                      "val/elbo": -101.25}))

    def complete():
        raise NothingToDo("The run is complete.")

    cfg = OmegaConf.create({"optimized_metric": "val/elbo"})
    assert cli._run(complete, cfg, run_dir=str(run_dir)) == -101.25
    cfg = OmegaConf.create({"optimized_metric": "test/elbo"})  # not recorded
    assert cli._run(complete, cfg, run_dir=str(run_dir)) is None


def test_a_search_file_of_ones_own_without_the_global_package_line_is_refused(tmp_path):
    """hparams_search=mine from the user's folder (hydra.searchpath), written without
    `# @package _global_`: Hydra placed its hydra.sweeper.params under hparams_search and the
    search ran without them, silently (newcomer walkthrough four); refused naming the line. With
    the line, the same file composes and passes the checks."""
    from vae_lightning.config_checks import check
    from vae_lightning.errors import ConfigError

    folder = tmp_path / "my_conf" / "hparams_search"
    folder.mkdir(parents=True)
    body = ("defaults:\n  - optuna\nhydra:\n  sweeper:\n    params:\n"
            "      model.objective.beta: interval(0.5, 1.0)\n")
    (folder / "mine.yaml").write_text(body)
    overrides = [f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "hparams_search=mine"]
    with pytest.raises(ConfigError, match=r"hparams_search=mine: its file's keys \(hydra\) were "
                       r"placed under hparams_search, where nothing reads them: .* "
                       r"`# @package _global_`"):
        check(compose_train(overrides, tmp_path / "a"))
    (folder / "mine.yaml").write_text("# @package _global_\n" + body)
    check(compose_train(overrides, tmp_path / "b"))


@pytest.mark.parametrize("model", ["hierarchy", "ladder"])
def test_a_search_of_a_key_the_model_composes_is_refused_before_the_study(
        tmp_path, monkeypatch, capsys, model):
    """model=hierarchy and ladder compose model.latent from their layers: the default search's
    choice of it was refused trial by trial, the study ending with none completed (hostile
    round sixteen). Refused before any trial, naming the key and what composes it."""
    pytest.importorskip("optuna")
    sweep = tmp_path / "search"
    proc = _sweep_here(["hparams_search=optuna", f"model={model}", "hydra.sweeper.n_trials=2"],
                       sweep, monkeypatch, capsys)
    assert proc.code == 2, proc.err[-3000:]
    assert ("The sweep varies model.latent (here ${sum:${.encoder.posterior.layers}})"
            ", which this model composes from other keys") in proc.err
    assert not (sweep / "optuna.db").exists() and not list(sweep.glob("*/results.json"))


@pytest.mark.parametrize("swept", ["model.latent=5,10", "model.decoder.latent=3,4"])
def test_a_command_line_sweep_of_a_key_the_model_composes_is_refused_before_any_job(
        tmp_path, monkeypatch, capsys, swept):
    """The same for a key swept on the command line (the basic sweeper, or a sweep override
    the Optuna sweeper adds to its search): every job was refused against the layers (or the
    decoder against z's size), the sweep ending with none completed (hostile round
    seventeen). Refused before any job; a key of the model's own is swept as before."""
    sweep = tmp_path / "sweep"
    model = "hierarchy" if swept.startswith("model.latent") else "vae"
    proc = _sweep_here(["-m", f"model={model}", swept, "trainer.max_steps=1"], sweep, monkeypatch,
                       capsys)
    assert proc.code == 2, proc.err[-3000:]
    key = swept.split("=")[0]
    assert f"The sweep varies {key} (here ${{" in proc.err, proc.err[-2000:]
    assert not list(sweep.glob("*/results.json"))


def test_the_grid_sampler_with_the_optuna_search_is_one_line_naming_the_way(tmp_path,
                                                                            monkeypatch, capsys):
    """hparams_search=optuna hydra/sweeper/sampler=grid stopped with Hydra's "Key 'seed' not in
    'SamplerConfig'" (the search seeds its sampler; Optuna's grid sampler takes no seed, nor
    the search's intervals): one line now says so and what to run for a grid, exit 2."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = run(cli.train, [*TINY, "hparams_search=optuna", "hydra/sweeper/sampler=grid",
                             f"hydra.sweep.dir={tmp_path / 'search'}"], monkeypatch, capsys,
                 tmp_path)
    assert result.code == 2, result.err[-2000:]
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "hydra/sweeper/sampler=grid cannot be used" in lines[0], lines
    assert "vae-train -m model.latent=2,5,10" in lines[0] and "Traceback" not in result.err
    assert not (tmp_path / "search").exists()


def test_the_jobs_a_sweep_s_problem_is_found_in_are_named_one_a_few_or_counted():
    from vae_lightning.sweeps import _jobs_named

    assert _jobs_named([1], {1: "model.latent=-1"}) == "job 1: model.latent=-1"
    assert _jobs_named([2, 5], {}) == "jobs 2, 5"
    assert _jobs_named(list(range(2, 60, 3)), {}) == "20 jobs: 2, 5, 8, 11, 14, 17, ..."
