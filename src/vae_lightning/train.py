"""Training: compose the run from its config, fit, test the best checkpoint, write results.json."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from vae_lightning.callbacks.curve import SampleBudget
from vae_lightning.config import ConfigError, validate
from vae_lightning.module import VAE
from vae_lightning.resume import (
    CheckpointError,
    ResumeState,
    check_resumable,
    read_checkpoint,
    wandb_run_id,
)

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, input_dim: int) -> VAE:
    """The VAE of ``cfg.model`` with the posterior, likelihood, prior and optimizer groups."""
    params = OmegaConf.to_container(cfg.model, resolve=True)
    model_cls = get_class(params.pop("_target_"))
    try:
        return model_cls(
            input_dim=input_dim,
            posterior=instantiate(cfg.posterior),
            likelihood=instantiate(cfg.likelihood),
            prior=instantiate(cfg.prior),
            optimizer=instantiate(cfg.optimizer),
            config=OmegaConf.to_container(cfg, resolve=True),
            steps_per_batch=steps_per_batch(cfg),
            **params,
        )
    except ValueError as err:
        raise ConfigError(f"Invalid model configuration: {err}") from err


def steps_per_batch(cfg: DictConfig) -> int:
    """``trainer.steps_per_batch``: the model and the data module both need it."""
    return cfg.trainer.get("steps_per_batch", 1)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    try:
        return instantiate(cfg.data, steps_per_batch=steps_per_batch(cfg))
    except ValueError as err:
        raise ConfigError(f"Invalid data configuration: {err}") from err


def _instantiate_all(group: DictConfig | None, **kwargs_by_key: dict[str, Any]) -> list[Any]:
    return [instantiate(node, **kwargs_by_key.get(key, {})) for key, node in (group or {}).items()]


def _progress_bar(cfg: DictConfig, callbacks: list[Any]) -> list[L.Callback]:
    """A progress bar redrawn every ``log_every_n_steps`` batches, when the bar was left to
    Lightning (whose bar redraws on every batch: a cost that shows with small models)."""
    if not cfg.trainer.get("enable_progress_bar", True) or any(
        isinstance(callback, ProgressBar) for callback in callbacks
    ):
        return []
    return [TQDMProgressBar(refresh_rate=max(1, cfg.trainer.get("log_every_n_steps", 1)))]


def _group_choices() -> dict[str, str]:
    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: ``last`` means this run directory's ``checkpoints/last.ckpt``."""
    if cfg.ckpt_path != "last":
        return cfg.ckpt_path
    path = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path=last: there is no {path} to resume from. Name the run with "
            "ckpt_path=<run dir>/checkpoints/last.ckpt, or start a fresh run without ckpt_path."
        )
    return str(path)


def trainer_config(cfg: DictConfig) -> tuple[DictConfig, float | None]:
    """``cfg.trainer`` without our keys, and ``max_samples``: a training length in samples
    seen (Fig. 2's x-axis), which replaces ``max_epochs`` when set."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("steps_per_batch", None)  # the model's and the data module's (see build)
    max_samples = trainer_cfg.pop("max_samples", None)
    if max_samples is not None:
        trainer_cfg["max_epochs"] = -1
    return OmegaConf.create(trainer_cfg), max_samples


class Run(NamedTuple):
    datamodule: L.LightningDataModule
    model: VAE
    resume_from: str | None
    checkpoint: dict[str, Any] | None


def build(cfg: DictConfig) -> Run:
    """Validate ``cfg``, read the checkpoint to resume from, and construct the data module and
    model; no data is read yet. Every configuration error surfaces here, as a ``ConfigError``,
    before any training."""
    validate(cfg)
    resume_from = resume_path(cfg)
    checkpoint = read_checkpoint(resume_from) if resume_from else None
    if checkpoint is not None:
        check_resumable(OmegaConf.to_container(cfg, resolve=True), checkpoint, resume_from)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    return Run(datamodule, build_model(cfg, datamodule.input_dim), resume_from, checkpoint)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build the run, train (or resume), evaluate the best checkpoint on val and test; return
    the results."""
    datamodule, model, resume_from, checkpoint = build(cfg)
    run_id = wandb_run_id(checkpoint) if checkpoint else None
    callbacks = [*_instantiate_all(cfg.get("callbacks")), ResumeState()]
    trainer_cfg, max_samples = trainer_config(cfg)
    if max_samples is not None:
        callbacks.append(SampleBudget(max_samples))
    try:
        trainer: L.Trainer = instantiate(
            trainer_cfg,
            logger=_instantiate_all(
                cfg.get("logger"), wandb={"id": run_id, "resume": "allow"} if run_id else {}
            ) or False,
            callbacks=[*callbacks, *_progress_bar(cfg, callbacks)],
        )
    except InstantiationException as err:  # e.g. trainer=gpu on a machine without one
        raise ConfigError(f"Invalid trainer configuration: {err}") from None

    try:
        return _fit_and_test(cfg, trainer, datamodule, model, resume_from)
    finally:
        for logger in trainer.loggers:  # so that the next job of a sweep starts its own run
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()


def _fit_and_test(
    cfg: DictConfig,
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    model: VAE,
    resume_from: str | None,
) -> dict[str, Any]:
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    seconds = time.perf_counter() - start
    fitted = {key: float(trainer.callback_metrics[key])
              for key in ("train/elbo", "train/samples_seen") if key in trainer.callback_metrics}
    epochs = trainer.current_epoch

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    evaluated = best or None
    evaluate = {"datamodule": datamodule, "ckpt_path": evaluated, "verbose": False}
    val = trainer.validate(model, weights_only=True, **evaluate)[0]
    test = trainer.test(model, weights_only=True, **evaluate)[0]

    choices = _group_choices()
    results = {
        **{key: float(value) for key, value in sorted({**val, **test}.items())},
        # The mean bound over the last training epoch's minibatches (the training weights).
        "train/elbo": fitted.get("train/elbo"),
        "data": choices.get("data", getattr(datamodule, "name", None)),
        "latent": cfg.model.latent,
        "likelihood": choices.get("likelihood", cfg.likelihood._target_),
        "prior": choices.get("prior", cfg.prior._target_),
        "posterior": choices.get("posterior", cfg.posterior._target_),
        "method": model.method,
        "objective": cfg.model.objective,
        "seed": cfg.seed,
        "epochs": epochs,
        "steps": trainer.global_step,
        "train_samples_seen": int(fitted.get("train/samples_seen", model.samples_seen)),
        "seconds": round(seconds, 3),
        "checkpoint": best or None,
    }
    if trainer.is_global_zero:
        path = Path(cfg.output_dir) / "results.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        log.info("test/elbo = %.3f nats; results written to %s", results["test/elbo"], path)
    return results
