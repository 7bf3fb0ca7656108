"""Training: check the config, build the data and the model, fit, evaluate the best checkpoint on
validation and test data, and write results.json."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import re
import shutil
import signal
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from vae_lightning import optimization, run_checks, rundir
from vae_lightning.args import prechecked
from vae_lightning.callbacks.curve import InitialBound
from vae_lightning.checkpoints import RunConfig, read_checkpoint
from vae_lightning.config import instantiate_node, plain
from vae_lightning.config_checks import check
from vae_lightning.console import command, override
from vae_lightning.errors import (
    ConfigError,
    Diverged,
    Interrupted,
    NonFiniteLossError,
)
from vae_lightning.groups import bundle_hint
from vae_lightning.log_likelihood import bound_of
from vae_lightning.module import VAE
from vae_lightning.rebuild import check_parts, trained_on
from vae_lightning.resume import (
    ResumeState,
    check_epoch_continues,
    check_resumable,
    check_states,
    logger_runs,
    whole_epochs,
)
from vae_lightning.sweeps import command_overrides, record_failure, threads_per_job
from vae_lightning.sweeps import overrides as _task_overrides

log = logging.getLogger(__name__)


class Run(NamedTuple):
    datamodule: L.LightningDataModule
    model: VAE
    resume_from: str | None
    checkpoint: dict[str, Any] | None
    record: dict[str, Any]  # the resolved run config, the data's shape filled in: checkpoints' copy


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``ckpt_path`` names (``last``: this run directory's last.ckpt)."""
    return rundir.resume_checkpoint(cfg.ckpt_path, cfg.output_dir)


def _overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides a run was started with (Hydra's record), less ckpt_path."""
    path = run_dir / rundir.HYDRA / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return [item for item in OmegaConf.load(path) if not item.startswith("ckpt_path=")]


def build_run(cfg: DictConfig) -> Run:
    """Check ``cfg``, build the data module (no data is read yet) and the model for the data's
    shape, and read the checkpoint to resume from. Every configuration error surfaces here, as a
    ``ConfigError`` naming its key, before any training; where the run chose a part under another
    model option than the one that chooses it with its companions (``model/objective=m2`` under
    ``model=vae``: the error is of a companion, ``model.classes=null``), it also names that
    option (``groups.bundle_hint``)."""
    try:
        return _build_run(cfg)
    except ConfigError as err:
        choices = (HydraConfig.get().runtime.choices if HydraConfig.initialized()
                   else OmegaConf.select(cfg, "hydra.runtime.choices", default=None))
        hint = bundle_hint(choices) if choices is not None else None
        # Of the model's keys only (model.classes=null, "model.encoder: ..."): a trainer's or a
        # checkpoint's error (CheckpointError) is not the model option's to mend.
        if type(err) is not ConfigError or hint is None \
                or not re.search(r"(^|\s)model[.:=\s]", str(err)):
            raise
        raise ConfigError(f"{err}\n{hint}") from None


def _build_run(cfg: DictConfig) -> Run:
    check(cfg)
    run_checks.check_length(cfg, _task_overrides())
    with prechecked():  # every node was checked above: constructors need not again
        datamodule = instantiate_node(cfg.data, "data")
        shape = list(datamodule.shape)  # handed to the model's builder; the config keeps ???
        record = plain(OmegaConf.merge(cfg, {"model": {"data_shape": shape}}))
        resume_from = resume_path(cfg)
        checkpoint = read_checkpoint(resume_from) if resume_from else None
        if checkpoint is not None:
            check_resumable(record, checkpoint, resume_from,
                            _overrides(rundir.of_checkpoint(resume_from)))
            run_checks.refuse_if_complete(cfg, checkpoint, resume_from)
            check_epoch_continues(record, checkpoint, resume_from)
        parts = run_checks.check_memory(cfg, shape)
        if checkpoint is not None:
            check_parts(parts, checkpoint["state_dict"], resume_from)
        L.seed_everything(cfg.seed, workers=True)
        model = instantiate_node(cfg.model, "model", data_shape=shape,
                           steps_per_batch=datamodule.steps_per_batch)
        optimization.check_manual(model, cfg.trainer)
        if checkpoint is not None:
            check_states(checkpoint, resume_from, model)
        try:  # the optimizer is built at fit; its own argument checks run now
            optimization.check(model)
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:
            node = cfg.model.optimizer
            if words := _not_numbers(node):
                raise ConfigError(f"Invalid configuration: {words}.") from None
            given = ", ".join(f"{key}={node[key]!r}" for key in node if not key.startswith("_"))
            raise ConfigError(f"Invalid configuration: model.optimizer ({node._target_} with "
                              f"{given}) refuses its arguments: {err}.") from None
    run_checks.warn_about_the_likelihood(datamodule, model)
    run_checks.check_bits_metric(cfg, model, datamodule)
    return Run(datamodule, model, resume_from, checkpoint, record)


def _not_numbers(node: DictConfig) -> str:
    """The optimizer's settings given as words where its class takes a number (its default is
    one), each with what it expects: torch's own message compares a float with a str."""
    target = node.get("_target_")
    try:
        parameters = inspect.signature(hydra.utils.get_class(target)).parameters
    except (ValueError, TypeError, ImportError, hydra.errors.HydraException):
        return ""
    wrong = [f"model.optimizer.{key}={node[key]!r} is not a number ({target}'s {key} is a "
             f"number, default {parameters[key].default!r})"
             for key in node if key in parameters and isinstance(node[key], str)
             and isinstance(parameters[key].default, int | float)
             and not isinstance(parameters[key].default, bool)]
    return "; ".join(wrong)


def _instantiate_all(group: DictConfig | None, key: str,
                     **kwargs_by_key: dict[str, Any]) -> list[Any]:
    """The nodes of a group of loggers or callbacks; one set to null is left out."""
    return [instantiate_node(node, f"{key}.{name}", **kwargs_by_key.get(name, {}))
            for name, node in (group or {}).items() if node is not None]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build the run, train (or resume), evaluate the best checkpoint on val and test; return
    the results. Nothing is written into the run directory before every check has passed.

    Called from Python (not through the command, which claims the run directory before and
    ends its claim after the job), the claim this call takes on the directory ends with it, so
    that a later call into the same directory finds the run this one left there."""
    rundir.run_directory(cfg.get("output_dir"))
    own_claim = not rundir.claimed(cfg.output_dir)
    try:
        return _train(cfg)
    finally:
        if own_claim:
            rundir.release(cfg.output_dir)


def _keep_the_last_checkpoint(directory: str | Path, resume_from: str) -> Path | None:
    """A resume from another checkpoint of the run than its ``last.ckpt`` (its best, as a
    non-finite stop advises) goes on in the run's directory, where it writes ``last.ckpt`` and
    results.json anew: the state the run had reached was replaced without a word. That
    ``last.ckpt`` is first copied to ``checkpoints/last-step<N>.ckpt`` (N: its step; ``-2``,
    ``-3``, ... where the name is taken), and a warning says so. Returns the copy."""
    from lightning.pytorch.utilities import rank_zero_only

    from vae_lightning.errors import UnwritableError
    from vae_lightning.files import atomic_write

    last = rundir.last_checkpoint(directory)
    if (rank_zero_only.rank != 0 or not last.is_file()
            or last.resolve() == Path(resume_from).resolve()):
        return None
    try:  # the step only (mmap: the tensors are not read); the file is checked where resumed
        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        stem = f"last-step{int(step)}"
    except Exception:  # noqa: BLE001 (not a checkpoint we can read: kept all the same)
        stem = "last-earlier"
    number, kept = 1, last.with_name(f"{stem}.ckpt")
    while kept.exists():
        number += 1
        kept = last.with_name(f"{stem}-{number}.ckpt")
    try:
        with open(last, "rb") as source, atomic_write(kept) as target:
            shutil.copyfileobj(source, target, 1 << 20)
    except OSError as err:
        raise UnwritableError(f"Resuming from {resume_from} replaces {last} (a later state of "
                              f"the run), which could not be kept as {kept.name}: {err}; "
                              "nothing was trained. Free space there, or resume into a new "
                              "directory (hydra.run.dir=<a new directory>).") from None
    log.warning("Resuming from %s, not from the run's %s: that last.ckpt (the state the run "
                "reached) is kept as %s; this run writes last.ckpt and results.json anew.",
                Path(resume_from).name, last, kept.name)
    return kept


def _train(cfg: DictConfig) -> dict[str, Any]:
    rundir.guard(cfg.output_dir, resuming=cfg.get("ckpt_path"))
    datamodule, model, resume_from, checkpoint, record = build_run(cfg)
    datamodule.prepare_data()  # find or download the files, then read every split (the test
    datamodule.setup("fit")  # split too): a bad data file is an error before the first step
    if checkpoint is not None:
        run_checks.check_same_data(checkpoint, datamodule, resume_from)
    run_checks.check_labels(model, datamodule)
    run_checks.check_grid(model, datamodule)
    run_checks.warn_about_grey_pixels(datamodule, model)  # the pixels read, before any step
    run_checks.check_log_input(model, datamodule)
    run_checks.check_bits_metric(cfg, model, datamodule)  # again: binary pixels now known
    run_checks.check_dataset_size(model, datamodule)
    loggers = _instantiate_all(cfg.get("logger"), "logger",
                               **(logger_runs(checkpoint) if checkpoint else {}))
    initial = InitialBound()
    manual, manual_callbacks = optimization.manual_settings(model, cfg.trainer)
    callbacks = [*_instantiate_all(cfg.get("callbacks"), "callbacks"), ResumeState(),
                 RunConfig(record), initial, *manual_callbacks]
    trainer = instantiate_node(cfg.trainer, "trainer", logger=loggers or False,
                               callbacks=callbacks, **manual)
    run_checks.check_minibatches(model, datamodule, trainer.world_size)  # each rank's share
    if resume_from is not None:  # nothing is moved or recorded before the checks above
        branch = _keep_the_last_checkpoint(cfg.output_dir, resume_from)
        rundir.record_resume(cfg.output_dir, _task_overrides())
        for logger in loggers if branch is not None else ():  # the rows after the checkpoint
            if hasattr(logger, "keep_dropped"):  # are the kept last.ckpt's branch: kept
                logger.keep_dropped = True
    if (threads := threads_per_job()) is not None:
        torch.set_num_threads(threads)
    run_checks.warn_about_busy_cores()
    try:
        results = _fit_and_test(cfg, trainer, datamodule, model, resume_from)
    except (NonFiniteLossError, Interrupted) as err:  # the run's status, and its curve so far
        if trainer.is_global_zero:
            record_failure(cfg.output_dir, err.status, str(err), err.exit_code,
                           replace_failures=True, overrides=_task_overrides(),
                           steps=trainer.global_step, train_samples_seen=model.samples_seen)
        raise
    finally:
        for logger in trainer.loggers:  # so that the next job of a sweep starts its own run
            if isinstance(logger, WandbLogger) and logger.started:
                logger.experiment.finish()
    if trainer.fast_dev_run:  # a check of the code path: nothing is kept as a run's results
        log.info("debug run (trainer.fast_dev_run): no results.json written.")
        return results
    return _judge(results, initial.value, cfg, write=trainer.is_global_zero, split=initial.split,
                  dims=math.prod(datamodule.shape))


def _judge(results: dict[str, Any], initial: float | None, cfg: DictConfig,
           write: bool, split: str = "val", dims: int = 1) -> dict[str, Any]:
    """The run's status by the rule of ``vae_lightning.sweeps``; the results, with their status,
    written into results.json (by rank 0: ``write``); ``Diverged`` when the bound ran away.
    ``initial`` is the untrained model's bound on ``split``, ``dims`` the values per data point.

    The floor is b0 - max(|b0|, D) nats, b0 the untrained bound and D the values per data point:
    twice as far below zero as where training started, and never less than a nat per value
    below it, so that a bound near zero (a density of continuous pixels, where b0 can be -2
    nats for 768 values) is not called diverged by ordinary noise of a few nats."""
    # The validation bound of the best checkpoint is the verdict; the training bound, an average
    # over the last epoch that holds the first steps' transient in a short run, only where there
    # is no validation; a non-finite one always.
    val, train = results.get("val/elbo"), results.get("train/elbo")
    judged = {"val/elbo": val} if val is not None else {"train/elbo": train}
    floor = initial - max(abs(initial), dims) if initial is not None else -math.inf
    worse = [f"{key} = {value:.4g} nats, below {floor:.4g}" if math.isfinite(value)
             else f"{key} is not finite ({value})" for key, value in judged.items()
             if value is not None and (not math.isfinite(value) or value < floor)]
    if val is not None and train is not None and not math.isfinite(train):
        worse.append(f"train/elbo is not finite ({train})")
    results["status"] = "diverged" if worse else "completed"
    results[f"initial/{split}_elbo"] = initial
    path = rundir.path(cfg.output_dir, "results")
    if write:
        rundir.write_json(path, results)
        log.info("test/elbo = %s nats (%s); results written to %s", results.get("test/elbo"),
                 results["status"], path)
    if worse:
        raise Diverged(
            f"The bound diverged: {' and '.join(worse)}; the floor is {floor:.4g} = b0 - "
            f"max(|b0|, D), where b0 = {initial:.4g} is the untrained model's bound ({split} "
            f"data, before the first step) and D = {dims} the values per data point. The "
            f"results are in "
            f"{path} (status diverged). Lower model.optimizer.lr.")
    return results

def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, datamodule: L.LightningDataModule,
                  model: VAE, resume_from: str | None) -> dict[str, Any]:
    with _signals_end_the_run(cfg, trainer):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        except MisconfigurationException as err:  # Lightning's own checks, before a step
            raise ConfigError(f"Invalid trainer configuration: {err}") from None
    # The clock the checkpoints record; the total is over the runs resumed too, read now:
    # testing the best checkpoint loads its record.
    seconds, total = model.fit_seconds(), model.train_seconds()
    batches = trainer.fit_loop.epoch_loop.batch_progress
    epochs = whole_epochs(trainer.fit_loop.epoch_progress.current.completed,
                          batches.current.completed, batches.is_last_batch)
    fitted = {key: float(trainer.callback_metrics[key])
              for key in ("train/elbo", "train/samples_seen") if key in trainer.callback_metrics}

    # The objective's choice: the best by val/elbo (the first checkpoint callback; without
    # validation, the last), or the final model (objectives that do not maximise the ELBO).
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.best_model_path),
                "")
    if model.objective.checkpoint == "last":
        last = rundir.last_checkpoint(cfg.output_dir)
        best = str(last) if last.is_file() else ""
    ours = rundir.last_checkpoint(cfg.output_dir).parent.resolve()
    if best and Path(best).resolve().parent != ours:
        # Recorded by a resumed checkpoint in the folder the run had before it was moved: the
        # file of that name here, if the move took it along; else the weights as trained.
        moved = ours / Path(best).name
        best = str(moved) if moved.is_file() else ""
    evaluate = {"datamodule": datamodule, "ckpt_path": best or None, "verbose": False}
    with _signals_end_the_run(cfg, trainer):  # none of a split with limit_*_batches=0
        val = next(iter(trainer.validate(model, weights_only=True, **evaluate)), {})
    # validate loaded the chosen weights into the model (even with no validation data to
    # score): test them without loading again
    evaluate["ckpt_path"] = None
    with _signals_end_the_run(cfg, trainer):
        test = next(iter(trainer.test(model, weights_only=True, **evaluate)), {})

    choices_ = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    model_cfg = cfg.model
    results = {
        **{key: float(value) for key, value in sorted({**val, **test}.items())},
        # The mean bound over the last training epoch's minibatches (the training weights).
        "train/elbo": fitted.get("train/elbo"),
        "data": choices_.get("data", getattr(datamodule, "name", None)),
        "latent": model.latent,
        "likelihood": choices_.get("model/likelihood", model_cfg.decoder.likelihood._target_),
        "prior": choices_.get("model/prior", model_cfg.prior._target_),
        "posterior": choices_.get("model/posterior", model_cfg.encoder.posterior._target_),
        "method": model.method,
        "objective": choices_.get("model/objective", model_cfg.objective._target_),
        "seed": cfg.seed,
        "tags": list(cfg.get("tags") or []),
        # The command line that made the run (a sweep's job: its own values, e.g. an Optuna
        # trial's), as the summary of a sweep reads it.
        "overrides": [item for item in _task_overrides() if not item.startswith("ckpt_path=")],
        "epochs": epochs,
        "steps": trainer.global_step,
        "train_samples_seen": int(fitted.get("train/samples_seen", model.samples_seen)),
        "seconds": round(seconds, 3),
        "seconds_total": round(total, 3) if total is not None else None,
        "threads": torch.get_num_threads(),
        "checkpoint": best or None,
    }
    if model.classes is not None:  # a conditional model's bounds need not be of log p(x)
        vectors = trained_on({"data": OmegaConf.to_container(cfg.data)}) == "vectors"
        results["bound_of"] = bound_of(model, torch.zeros(1, model.classes) if vectors else None)
    return results


@contextlib.contextmanager
def _signals_end_the_run(cfg: DictConfig, trainer: L.Trainer):
    """Lightning stops on SIGTERM at the end of the epoch, after ``last.ckpt`` is written (so
    the run resumes exactly), and on Ctrl-C at once (``last.ckpt`` then holds the last epoch's
    end); both leave the Trainer with a ``SystemExit``, of exit code 0 for SIGTERM. Here either
    ends the run with exit code 128 + the signal and the command to resume; its results.json
    records the status ``interrupted`` and the curve so far, no test results.

    Lightning looks for SIGTERM only between steps, epochs and evaluation batches, and forgets
    it at its next Trainer call: one that arrives after the last epoch's check (in
    ``on_train_end``, while the loop tears down) or in an evaluation's last batch lets the call
    return as if nothing happened. So each Trainer call is wrapped on its own, and one that
    returns having received SIGTERM ends the run the same way."""
    try:
        yield
    except SystemExit:
        signum = (signal.SIGTERM if trainer.received_sigterm
                  else signal.SIGINT if trainer.interrupted else None)
        if signum is None:
            raise
        raise _interrupted(cfg, trainer, signum) from None
    if trainer.received_sigterm:
        raise _interrupted(cfg, trainer, signal.SIGTERM)


def _interrupted(cfg: DictConfig, trainer: L.Trainer, signum: int) -> Interrupted:
    """What to tell after a signal stopped the run, and how to resume."""
    last = rundir.last_checkpoint(cfg.output_dir)
    overrides = [item for item in command_overrides() if not item.startswith("ckpt_path=")]
    recorded = "results.json records the status 'interrupted' (no test results)"
    others = rundir.checkpoint_files(cfg.output_dir) if not last.is_file() else []
    again = [item for item in overrides if not item.startswith("hydra.run.dir=")]
    if others:  # no last.ckpt, but checkpoints (Lightning's own, with callbacks=none)
        resume = command("vae-train", *again, override("hydra.run.dir", cfg.output_dir),
                         override("ckpt_path", others[-1]))
        return Interrupted(
            f"Stopped by {signal.Signals(signum).name}; the run keeps no {last}, but its "
            f"newest checkpoint is {others[-1]}; {recorded}. Resume with: {resume}", signum)
    if not last.is_file():  # nothing to resume: the run starts afresh there (rundir.is_run)
        return Interrupted(
            f"Stopped by {signal.Signals(signum).name} before the first checkpoint, so there is "
            f"nothing to resume; {recorded}. Run it again: "
            f"{command('vae-train', *again, override('hydra.run.dir', cfg.output_dir))}",
            signum)
    saved = read_checkpoint(last)
    return Interrupted(
        f"Stopped by {signal.Signals(signum).name}; the state after step {saved['global_step']} "
        f"(epoch {saved['epoch']}) is saved in {last}; {recorded}. "
        f"Resume with: {command('vae-train', *overrides, override('ckpt_path', last))}",
        signum)
