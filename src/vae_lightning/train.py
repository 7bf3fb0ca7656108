"""Training: compose the run from its config, fit, test the best checkpoint, write results.json."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lightning.config import ConfigError, validate
from vae_lightning.module import VAE

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
            **params,
        )
    except ValueError as err:
        raise ConfigError(f"Invalid model configuration: {err}") from err


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    try:
        return instantiate(cfg.data)
    except ValueError as err:
        raise ConfigError(f"Invalid data configuration: {err}") from err


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (group or {}).values()]


def _group_choices() -> dict[str, str]:
    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: ``last`` means this run directory's ``checkpoints/last.ckpt``."""
    if cfg.ckpt_path == "last":
        return str(Path(cfg.output_dir) / "checkpoints" / "last.ckpt")
    return cfg.ckpt_path


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, VAE]:
    """Validate ``cfg`` and construct its data module and model; no data is read yet. Every
    configuration error surfaces here, as a ``ConfigError``, before any training."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    return datamodule, build_model(cfg, datamodule.input_dim)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build the run, train, evaluate the best checkpoint on val and test; return the results."""
    datamodule, model = build(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=_instantiate_all(cfg.get("logger")) or False,
        callbacks=_instantiate_all(cfg.get("callbacks")),
    )

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_path(cfg))
    seconds = time.perf_counter() - start
    samples_seen, epochs = model.samples_seen, trainer.current_epoch

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    evaluated = best or None
    val = trainer.validate(model, datamodule=datamodule, ckpt_path=evaluated, verbose=False)[0]
    test = trainer.test(model, datamodule=datamodule, ckpt_path=evaluated, verbose=False)[0]

    choices = _group_choices()
    results = {
        **{key: float(value) for key, value in sorted({**val, **test}.items())},
        "data": choices.get("data", getattr(datamodule, "name", None)),
        "latent": cfg.model.latent,
        "likelihood": choices.get("likelihood", cfg.likelihood._target_),
        "prior": choices.get("prior", cfg.prior._target_),
        "posterior": choices.get("posterior", cfg.posterior._target_),
        "objective": cfg.model.objective,
        "seed": cfg.seed,
        "epochs": epochs,
        "steps": trainer.global_step,
        "train_samples_seen": samples_seen,
        "seconds": round(seconds, 3),
        "checkpoint": best or None,
    }
    if trainer.is_global_zero:
        path = Path(cfg.output_dir) / "results.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        log.info("test/elbo = %.3f nats; results written to %s", results["test/elbo"], path)
    return results
