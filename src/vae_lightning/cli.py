"""Command-line entry points, Hydra applications over the config groups of the checkout's
top-level ``conf/``, which the package ships as ``vae_lightning.conf`` (``pkg://vae_lightning.conf``),
so an installed package and a checkout read the same configs:

- ``vae-train`` (= ``python train.py``): train a VAE;
- ``vae-eval`` (= ``python eval.py``): the ELBO and IW log-likelihood of a checkpoint;
- ``vae-sample`` (= ``python -m vae_lightning.sample``): images drawn from a checkpoint.

Every error a user can act on ends the command with one ``error:`` line and the exit code of
``errors.EXIT_CODES``. torch and Lightning are imported inside the tasks, so that ``--help``,
``--cfg job`` and ``--info`` answer without them (about 3 s less).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

import vae_lightning.resolvers  # noqa: F401  (registers the configs' resolvers; imports no torch)
from vae_lightning.errors import Interrupted, UserError

CONFIG_PATH = "pkg://vae_lightning.conf"
T = TypeVar("T")
log = logging.getLogger(__name__)


def _one_log_line_per_record() -> None:
    """``import lightning`` gives the ``lightning`` logger a console handler of its own, which
    doubles every record that also reaches Hydra's handlers on the root logger; under Hydra the
    root handlers (console and the job's log file) are the only ones."""
    import lightning  # noqa: F401  (its import adds the handler)

    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()


def _run(task: Callable[[], T], run_dir: str | None = None) -> T | None:
    """Run ``task``; a ``UserError`` ends the command with its one-line message and exit code.

    In a sweep (``-m``) a job that fails (bad input, a bug, a diverged or non-finite run) does
    not end the sweep: its status and message go into its ``results.json`` (``run_dir``, when
    this job claimed it fresh), its log, and the job returns None, which Hydra's sweepers (and
    Optuna's) count as a failed trial; a signal still ends the sweep."""
    from vae_lightning import rundir, sweeps

    _one_log_line_per_record()
    try:
        return task()
    except Exception as err:
        failure = _user_error(err)
        sweep = sweeps.in_sweep() and run_dir is not None
        if failure is None and not sweep:
            raise
        if sweep and not isinstance(failure, Interrupted):
            if failure is None:
                log.exception("The job failed with an unexpected error (a bug):")
            message = str(failure or f"{type(err).__name__}: {err}")
            code = failure.exit_code if failure is not None else 1
            if not rundir.claim(run_dir).had_run:
                sweeps.record_failure(run_dir, getattr(failure, "status", "error"), message, code,
                                      overrides=sweeps.overrides())
            log.error("The job failed (%s, exit code %d); the sweep goes on: %s",
                      getattr(failure, "status", "error"), code, message)
            print(f"{failure.prefix if failure else 'error'}: {message}", file=sys.stderr)
            return None
        print(f"{failure.prefix}: {failure}", file=sys.stderr)
        raise SystemExit(failure.exit_code) from None


def _user_error(err: Exception) -> UserError | None:
    """``err`` as the ``UserError`` it is or stands for (a failed write), else None: a bug."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, OSError | RuntimeError):
        from vae_lightning.checkpoints import unwritable

        return unwritable(getattr(err, "filename", None) or "the run's files", err)
    return None


def _check_with_checkpoint(cfg: DictConfig, example: str) -> None:
    """Check a config that names a checkpoint to use (``ckpt_path``, required)."""
    from omegaconf import OmegaConf

    from vae_lightning.config import check
    from vae_lightning.errors import ConfigError

    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ConfigError(f"ckpt_path is required, e.g. {example}")
    check(cfg)


def _entry(app: Callable[[], object]) -> Callable[[], None]:
    """A command: Hydra's app ``app``, with a config Hydra cannot compose (an unknown option or
    key, a wrong type) reported as one ``error:`` line with exit code 2 like every other bad
    input, instead of Hydra's own report (exit code 1)."""

    def command() -> None:
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; the report is made here
        try:
            app()
        except (HydraException, OmegaConfBaseException) as err:
            print(f"error: {_hydra_message(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        except ValueError as err:  # Optuna's sweeper asks for the best trial of a study in
            if str(err) != "Record does not exist.":  # which no trial completed
                raise
            from vae_lightning.sweeps import SWEEP_FAILED

            print("error: no trial of the search completed (each failed: see its results.json "
                  "and log above), so the study has no best trial.", file=sys.stderr)
            raise SystemExit(SWEEP_FAILED) from None

    command.__doc__ = app.__doc__
    return command


def _hydra_message(err: Exception) -> str:
    """Hydra's and OmegaConf's multi-line messages as one paragraph."""
    text = str(err).split("Config search path:")[0]
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip()
             and not line.strip().startswith(("object_type=", "Set the environment variable"))]
    message = re.sub(r":;", ":", "; ".join(lines)) + "."
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).splitlines()[0] not in message:
        message += f" ({str(cause).splitlines()[0]})"
    return message


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train(cfg: DictConfig) -> float:
    """``vae-train``: train a VAE (see README.md)."""

    def task() -> float:
        from vae_lightning.train import train as run_training

        return run_training(cfg).get("val/elbo")

    return _run(task, run_dir=cfg.get("output_dir"))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def _evaluate(cfg: DictConfig) -> float:
    """``vae-eval``: the ELBO and the importance-weighted log-likelihood of a checkpoint."""

    def task() -> float:
        from vae_lightning.config import build

        _check_with_checkpoint(cfg, "vae-eval ckpt_path=<run>/checkpoints/last.ckpt")
        results = build(cfg.eval, "eval")(cfg.ckpt_path, cfg.seed, cfg.get("output_dir"))
        for name in ("elbo", "iw"):
            est = results[name]
            print(f"{results['split']} {name:>4}: {est['nats']:.3f} +- {est['nats_se']:.3f} "
                  f"nats, {est['bits_per_dim']:.4f} +- {est['bits_per_dim_se']:.4f} bits/dim")
        print(f"(k={results['k']}, n={results['n']}; {results['active_units']} of "
              f"{results['latent']} latent units active) written to {results['path']}")
        return results["iw"]["nats"]

    return _run(task)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
def _sample(cfg: DictConfig) -> None:
    """``vae-sample``: images drawn from a trained model, as a PNG grid and an .npy array."""

    def task() -> None:
        from vae_lightning.config import build

        _check_with_checkpoint(cfg, "vae-sample ckpt_path=<run>/checkpoints/last.ckpt n=64")
        out = build(cfg, "sample")()
        print(f"written: {out / 'samples.png'}, {out / 'samples.npy'}")

    _run(task)


train = _entry(_train)
evaluate = _entry(_evaluate)
sample = _entry(_sample)
