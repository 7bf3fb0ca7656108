"""Command-line entry points, Hydra applications over the config groups of the checkout's
top-level ``conf/``, which the package ships as ``vae_lightning.conf`` (``pkg://vae_lightning.conf``),
so an installed package and a checkout read the same configs:

- ``vae-train`` (= ``python train.py``): train a VAE;
- ``vae-eval`` (= ``python eval.py``): the ELBO and IW log-likelihood of a checkpoint;
- ``vae-sample`` (= ``python -m vae_lightning.sample``): images drawn from a checkpoint;
- ``vae-encode`` (= ``python -m vae_lightning.encode``): a checkpoint's posterior locations of
  data splits, with their labels, in one ``.npz``.

Every error a user can act on ends the command with one ``error:`` line and the exit code of
``errors.EXIT_CODES``: a config Hydra cannot compose, a run directory that cannot be written
(checked by ``Preflight`` before Hydra creates it), a signal outside training (SIGTERM: exit
143, SIGINT: 130, with the line and, in a sweep, the job's status and the sweep's count). A run
refused by its checks leaves no directory it created (``rundir.discard``). torch and Lightning
are imported inside the tasks, so that ``--help``, ``--cfg job`` and ``--info`` answer without
them (about 3 s less).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import vae_lightning.resolvers  # noqa: F401  (registers the configs' resolvers; imports no torch)
from vae_lightning import console
from vae_lightning.errors import ConfigError, Interrupted, NothingToDo, UserError
from vae_lightning.hydra_errors import hydra_message, study_error, user_error, value_error
from vae_lightning.signals import Signal, catch, stopped

CONFIG_PATH = "pkg://vae_lightning.conf"
T = TypeVar("T")
log = logging.getLogger(__name__)

def _run(task: Callable[[], T], cfg: DictConfig, run_dir: str | None = None,
         progress: Callable[[], Path | None] | None = None) -> T | None:
    """Run ``task``; a ``UserError`` ends the command with its one-line message and exit code
    (``_fail``).

    In a sweep (``-m``) a job that fails (bad input, a bug, a diverged or non-finite run) does
    not end the sweep: its status and message go into its ``results.json`` (``run_dir``, when
    this job claimed it fresh; vae-train), else into the sweep's note of the job
    (``sweeps.note_job``: a job refused in a directory that holds a run, and every job of
    vae-eval, vae-sample and vae-encode, whose completed jobs are noted too), its log, and the
    job returns None, which Hydra's sweepers (and Optuna's) count as a failed trial; a signal
    still ends the sweep. ``progress``: where the task keeps its progress (vae-eval's batches
    done), which a signal's line then names."""
    from vae_lightning import rundir, sweeps

    sweep = sweeps.in_sweep()
    # The job's claim on its directory, taken before it runs (Hydra's record resolver has
    # usually taken it already): whether the directory held a run before this job, which decides
    # where a failed job's status goes, and the claim ``task`` finds held (train.train then
    # leaves ending it to this function).
    found = None
    try:
        found = rundir.claim(run_dir) if run_dir is not None else None
        console.one_log_line_per_record()
        console.quiet(cfg)
        done = task()
        if sweep and run_dir is None:  # no results.json says that this job completed
            sweeps.note_job(sweeps.job_directory(), sweeps.COMPLETED)
        return done
    except (Signal, KeyboardInterrupt) as stop:  # outside training (train.py handles those in it)
        raise SystemExit(stopped(getattr(stop, "signum", signal.SIGINT), run_dir,
                                 progress=progress() if progress else None)) from None
    except Exception as err:
        failure = user_error(err)
        if failure is None and not sweep:
            raise
        if sweep and isinstance(failure, NothingToDo):  # a complete run, resumed: not a failure
            sweeps.note_job(run_dir if run_dir is not None else sweeps.job_directory(),
                            (sweeps.job_status(run_dir) if run_dir is not None else None)
                            or sweeps.COMPLETED)
            print(f"{failure.prefix}: {failure}", file=sys.stderr)
            # An Optuna trial of a complete run gets the run's value, not a failed trial's None.
            return _recorded(run_dir, cfg.get("optimized_metric"))
        if sweep and not isinstance(failure, Interrupted):
            if failure is None:
                log.exception("The job failed with an unexpected error (a bug):")
            message = str(failure or f"{type(err).__name__}: {err}")
            code = failure.exit_code if failure is not None else 1
            status = getattr(failure, "status", "error")
            if found is not None and not found.had_run:
                sweeps.record_failure(run_dir, status, message, code,
                                      overrides=sweeps.overrides())
            else:  # the directory's files are another run's, or no results.json is written
                sweeps.note_job(run_dir if run_dir is not None else sweeps.job_directory(),
                                status, message, code)
            # In the job's log; on the console the error line below says it once.
            log.error("The job failed (%s, exit code %d); the sweep goes on: %s",
                      status, code, message, extra=console.FILE_ONLY)
            print(f"{failure.prefix if failure else 'error'}: {message}", file=sys.stderr)
            return None
        raise SystemExit(failure) from None
    finally:  # the job has ended, however: its directory's lock is no longer needed, and a
        rundir.release(run_dir)  # later command in this process claims the directory anew
        if sweep and run_dir is None:  # vae-eval's, -sample's, -encode's job: the directory
            rundir.release(sweeps.job_directory())  # Hydra's record claimed (record_dir)


def _check_with_checkpoint(cfg: DictConfig, example: str) -> None:
    """Check a config that names a checkpoint to use (``ckpt_path``, required)."""
    from vae_lightning.config_checks import check

    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ConfigError(f"ckpt_path is required, e.g. {example}")
    from vae_lightning import rundir

    if cfg.ckpt_path == rundir.LAST_KEYWORD and not Path(cfg.ckpt_path).exists():
        raise ConfigError(  # was "Checkpoint last does not exist."
            f"ckpt_path={rundir.LAST_KEYWORD} is vae-train's word for resuming a run; this "
            f"command reads the checkpoint file you name, e.g. {example}")
    check(cfg)


def _fail(err: UserError) -> NoReturn:
    """End the command with ``err``'s line and exit code; a signal in a sweep also records the
    status of the jobs it stopped and prints the sweep's count of its jobs. A directory Hydra
    created for the command that holds nothing but its record and log is removed: a refused run
    leaves nothing."""
    from vae_lightning import rundir, sweeps

    if isinstance(err, Interrupted):  # the command is ending: a second signal waits for it
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"{err.prefix}: {err}", file=sys.stderr, flush=True)
    if isinstance(err, Interrupted):
        sweeps.interrupted(str(err), err.exit_code)
    rundir.discard_all()
    raise SystemExit(err.exit_code)


def _entry(app: Callable[[], object]) -> Callable[[], None]:
    """A command: Hydra's app ``app``, with every error a user can act on reported as one
    ``error:`` line with its exit code (``_fail``): a config Hydra cannot compose (exit code 2,
    instead of Hydra's own report and 1), a missing plugin (naming its extra), a signal outside
    training, an unreadable Optuna study."""

    def command() -> None:
        from vae_lightning import rundir

        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; the report is made here
        previous = catch(signal.SIGTERM)
        rundir.forget()
        try:
            app()
            rundir.forget()
        except SystemExit as exit_:
            if isinstance(exit_.code, UserError):
                _fail(exit_.code)
            raise
        except (Signal, KeyboardInterrupt) as stop:  # outside a job, e.g. between two of a sweep
            _fail(stopped(getattr(stop, "signum", signal.SIGINT), None))
        except BrokenPipeError:  # the reader of the output went away (vae-train --help | head)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        except (HydraException, OmegaConfBaseException) as err:
            _fail(ConfigError(hydra_message(err)))
        except UserError as err:  # outside a job
            _fail(err)
        except ValueError as err:
            _fail(value_error(err))
        except Exception as err:
            study = study_error(err)
            if study is None:
                raise
            _fail(study)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    command.__doc__ = app.__doc__
    return command


class Preflight(Callback):
    """Hydra's callback that checks, before Hydra creates or writes anything, the run directory
    (``rundir.prepare``; for vae-train, one that holds a run: ``rundir.refuse_into``); for a
    sweep its directory, the launcher's and the sweeper's plugins
    (``groups.missing_plugins``), an Optuna study file (``sweeps.check_study``) and the
    sweeper's and launcher's settings (``check_sweeper``, ``check_launcher``). A refusal
    ends the command with its error line (``_entry``: a ``SystemExit`` carrying the error, which
    Hydra does not swallow as it does a callback's exceptions)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vae_lightning import rundir

        def checks() -> None:
            HydraConfig.instance().set_config(config)  # for ${hydra:...} in hydra.run.dir
            _refuse_chdir(config)
            _warn_of_repeats(config)
            directory = OmegaConf.select(config, "hydra.run.dir")
            rundir.prepare(directory)
            if "trainer" not in config:  # vae-eval, vae-sample
                return
            _refuse_output_dir(config, directory)
            if rundir.is_run(directory):
                rundir.refuse_into(directory, config.get("ckpt_path"))
            if config.get("ckpt_path") == rundir.LAST_KEYWORD and rundir.is_run(directory):
                log.info(rundir.resumed_run(directory))  # on the console, before the run's log

        self._check(checks)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vae_lightning import rundir, sweeps
        from vae_lightning.groups import missing_plugins

        def checks() -> None:
            _refuse_chdir(config)
            _warn_of_repeats(config)
            if "trainer" in config:
                _refuse_output_dir(config, None)
            rundir.prepare(config.hydra.sweep.dir, "hydra.sweep.dir")
            given = [o for o in OmegaConf.select(config, "hydra.overrides.hydra", default=[])
                     if str(o).startswith("hydra.run.dir=")]
            if given:  # a sweep's jobs went elsewhere, named only in its last line
                log.warning("%s is not used by a sweep (-m): its jobs go to hydra.sweep.dir=%s "
                            "(one folder each); give hydra.sweep.dir=... to choose where.",
                            given[0], config.hydra.sweep.dir)
            missing = missing_plugins(config.hydra)
            if missing:
                raise ConfigError(missing)
            sweeps.check_study(OmegaConf.select(config, "hydra.sweeper.storage", default=None))
            sweeps.check_launcher(config.hydra.launcher)
            sweeps.check_sweeper(config.hydra.sweeper, config.get("optimized_metric"))
            sweeps.check_search_space(config)
            sweeps.check_jobs(config)

        self._check(checks)

    @staticmethod
    def _check(checks: Callable[[], None]) -> None:
        try:
            checks()
        except UserError as err:
            raise SystemExit(err) from None
        except OmegaConfBaseException:  # a key that cannot be resolved: Hydra reports it next
            return


def _warn_of_repeats(config: DictConfig) -> None:
    """Warn of a key given twice on the command line with different values (``data=frey ...
    data=mnist``, a script's base command and its own value): Hydra takes the last, silently,
    and the run trained on what the first did not say."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = [str(item) for item in OmegaConf.select(config, "hydra.overrides.task", default=[])]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override itself
        return
    values: dict[str, list[str]] = {}
    for item, text in zip(parsed, task, strict=True):  # a sweep's value as written: 2,5
        values.setdefault(item.get_key_element(), []).append(text.split("=", 1)[-1])
    for key, given in values.items():
        if len(set(given)) > 1:
            log.warning("%s is given %d times on the command line (%s): the last, %s=%s, is "
                        "used.", key, len(given), ", then ".join(given), key, given[-1])


def _refuse_chdir(config: DictConfig) -> None:
    """Refuse ``hydra.job.chdir=true`` (the lightning-hydra-template's old default): the job
    would run inside its run directory, where a relative data.path, the default data.root and
    ``ckpt_path=last``'s outputs/ are not (a relative data.path was "does not exist" while it
    was there, and the data were downloaded into each run)."""
    if OmegaConf.select(config, "hydra.job.chdir", default=False) is True:
        raise ConfigError(
            "hydra.job.chdir=true is not supported: every command reads its relative paths "
            "(data.path, data.root, ckpt_path, output_dir) from the directory it is started in "
            "and writes into the run directory itself; inside the run directory those paths "
            "would name other files. Leave hydra.job.chdir false (the default).")


def _refuse_output_dir(config: DictConfig, run_dir: str | None) -> None:
    """Refuse a training run's ``output_dir`` set apart from Hydra's run directory ``run_dir``
    (any, under a sweep: None): the run's record (``.hydra/``) and ``train.log`` go to the run
    directory, so its checkpoints and results were kept apart from them, and vae-eval found no
    record of the data's path beside the checkpoints. An empty or null one is refused, naming
    the key, by ``rundir.run_directory``."""
    value = config._get_node("output_dir")._value() if "output_dir" in config else None
    if not isinstance(value, str) or not value.strip() or "${" in value:
        return
    if run_dir is not None and Path(value).resolve() == Path(run_dir).resolve():
        return
    where = "hydra.sweep.dir=<dir> (each job in a folder of its own)" if run_dir is None \
        else f"hydra.run.dir={value}"
    raise ConfigError(
        f"output_dir={value} is not the run directory: a run's checkpoints and results go to "
        "Hydra's run directory with its record (.hydra/) and train.log, where vae-eval, a "
        f"resume and vae-summarize read them together. Give {where} instead.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _figure(value: float | None, spec: str = ".3f") -> str:
    """A number of eval.json as printed: null (NaN, which eval.json writes as null: one point's
    standard error, a bound that is not finite) as -."""
    return "-" if value is None or value != value else format(value, spec)


def _recorded(run_dir: str | None, metric: str | None) -> float | None:
    """``metric`` as the run's results.json in ``run_dir`` records it (a number), else None."""
    if run_dir is None or metric is None:
        return None
    from vae_lightning import rundir

    try:
        value = json.loads(rundir.path(run_dir, "results").read_text()).get(metric)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _optimized(results: dict[str, Any], metric: str | None) -> float | None:
    """The value a sweeper optimises: ``results[optimized_metric]`` (None without one)."""
    if metric is None:
        return None
    if results.get(metric) is None:
        available = sorted(k for k, v in results.items() if "/" in k and isinstance(v, float))
        raise ConfigError(f"optimized_metric={metric} is not among this run's results "
                          f"({', '.join(available)}): choose one of them.")
    return results[metric]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    """``vae-train``: train a VAE (see README.md)."""

    def task() -> float | None:
        from vae_lightning.train import train as run_training

        console.print_config(cfg)
        return _optimized(run_training(cfg), cfg.get("optimized_metric"))

    return _run(task, cfg, run_dir=cfg.get("output_dir") or None)  # "": refused by the task


def _active(count: int | None, of: int) -> str:
    """"c of n", or, where one point leaves the active units undefined (null), "? of n"."""
    return f"{count} of {of}" if count is not None else f"? (one point: undefined) of {of}"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def _evaluate(cfg: DictConfig) -> float:
    """``vae-eval``: the ELBO and the importance-weighted log-likelihood of a checkpoint."""

    def task() -> float:
        from vae_lightning.config import instantiate_node
        from vae_lightning.run_checks import warn_about_busy_cores

        _check_with_checkpoint(cfg, "vae-eval ckpt_path=<run>/checkpoints/last.ckpt")
        warn_about_busy_cores()  # as training: an evaluation with k = 5000 runs long
        results = instantiate_node(cfg.eval, "eval")(cfg.ckpt_path, cfg.seed, cfg.get("output_dir"))
        for name in ("elbo", "iw", "ais"):
            est = results.get(name)
            if est is None:  # AIS only on request (eval.ais_steps)
                continue
            bits = (f", {est['bits_per_dim']:.4f} +- {_figure(est['bits_per_dim_se'], '.4f')} "
                    "bits/dim" if est.get("bits_per_dim") is not None else "")  # discrete data
            how = (f" ({_count(est['steps'], 'step')}, {_count(est['chains'], 'chain')} from the "
                   f"{est['start']}; "
                   f"{est['minus_iw']['nats']:+.3f} +- {_figure(est['minus_iw']['nats_se'])} "
                   "nats against iw, point by point; fewest effective chains of a point "
                   f"{est['ess_min']:.2f})" if name == "ais" else "")
            print(f"{results['split']} {name:>4}: {_figure(est['nats'])} +- "
                  f"{_figure(est['nats_se'])} nats{bits}{how}")
        if quality := results.get("sample_quality"):  # eval.sample_quality: the scores again
            kid = quality.get("kid") or {}
            scores = [f"{name} {quality[name]:.4g}" for name in ("fid", "precision", "recall")
                      if quality.get(name) is not None]
            scores += ([f"kid {kid['mean']:.4g} +- {_figure(kid['std'], '.2g')}"]
                       if kid.get("mean") is not None else [])
            print(f"{results['split']} sample quality ({quality['generated']} samples against "
                  f"{quality['real']} images, {quality['features']} features): "
                  f"{', '.join(scores) or 'none finite'}")
        if "classification_error" in results:  # a semi-supervised model's classifier (M2)
            print(f"{results['split']} classification error of q(y|x): "
                  f"{results['classification_error']:.4f}")
        if "fitted_prior" in results:  # a VQ-VAE's bound with its prior fitted after training
            est = results["fitted_prior"]["elbo"]
            bits = (f", {est['bits_per_dim']:.4f} bits/dim" if est["bits_per_dim"] is not None
                    else "")
            print(f"{results['split']} elbo with the fitted {results['fitted_prior']['sampler']}"
                  f" prior: {_figure(est['nats'])} +- {_figure(est['nats_se'])} nats{bits}")
        if "kl" in results:  # posterior collapse: the mean KL and I_q(x; z) (null: not defined)
            se = (f" +- {results['mi_se']:.3f}" if results.get("mi_se") is not None else "")
            mi = f", I(x; z) {results['mi']:.3f}{se}" if results.get("mi") is not None else ""
            # A conditional VAE's q and p are given y (p(z|y) is p(z) where the prior is not).
            kl = ("KL(q(z|x,y) || p(z|y))" if results["bound_of"].startswith("log p(x|y)")
                  else "KL(q(z|x) || p(z))")
            print(f"{results['split']} {kl} {_figure(results['kl'])}{mi} nats")
        for i, layer in enumerate(results.get("layers", []), start=1):  # stochastic layers
            kl = f", KL {layer['kl']:.2f} nats" if layer["kl"] is not None else ""
            print(f"  z_{i}: {_active(layer['active_units'], layer['size'])} units "
                  f"active{kl}")
        given = f"; bounds on {results['bound_of']}" if results["bound_of"] != "log p(x)" else ""
        # Which model (its training length: a short run's number is not a converged one's) and
        # what the +- is, on the line a reader copies.
        seen = results.get("train_samples_seen")
        trained = f"; the model after {seen:,} training samples" if seen is not None else ""
        print(f"(k={results['k']}, n={results['n']}, +- the standard error over the points"
              f"{trained}; {_active(results['active_units'], results['latent'])} latent units "
              f"active{given}) written to {results['path']}")
        return results["iw"]["nats"]

    def progress() -> Path | None:  # where the evaluation keeps the batches it has done
        from vae_lightning import rundir

        if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
            return None
        return rundir.path(cfg.get("output_dir") or rundir.of_checkpoint(cfg.ckpt_path),
                           "eval_progress")

    return _run(task, cfg, progress=progress)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
def _sample(cfg: DictConfig) -> None:
    """``vae-sample``: images drawn from a trained model, as a PNG grid and an .npy array."""

    def task() -> None:
        from vae_lightning.config import instantiate_node

        _check_with_checkpoint(cfg, "vae-sample ckpt_path=<run>/checkpoints/last.ckpt n=64")
        out = instantiate_node(cfg, "")()
        names = ("samples.png", "samples.npy",
                 *(("traversals.png", "traversals.gif") if cfg.get("traverse") else ()))
        written = [out / name for name in names if (out / name).is_file()]
        print(f"written: {', '.join(map(str, written))}")

    _run(task, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="encode")
def _encode(cfg: DictConfig) -> None:
    """``vae-encode``: the locations of q(z|x) of a trained model's data splits, with their
    labels, in one .npz file (and a .json describing it)."""

    def task() -> None:
        from vae_lightning.config import instantiate_node

        _check_with_checkpoint(cfg, "vae-encode ckpt_path=<run>/checkpoints/last.ckpt")
        record = instantiate_node(cfg, "")()
        shapes = ", ".join(f"{name} {shape}" for name, shape in record["arrays"].items())
        print(f"written: {record['locations']} ({shapes}), {record['record']}")

    _run(task, cfg)


train = _entry(_train)
evaluate = _entry(_evaluate)
sample = _entry(_sample)
encode = _entry(_encode)
