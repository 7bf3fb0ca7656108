"""Resuming runs exactly: random-number states in every checkpoint, and safe checkpoint reading."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from vae_lightning.config import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint that is missing, corrupt or not one of ours."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling), or say why not."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint {path} does not exist.") from None
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({reason}): the file is corrupt or truncated, or "
            "not a vae-lightning checkpoint. Use another file of the run's checkpoints/ "
            "directory (last.ckpt or a best-*.ckpt)."
        ) from None


class ResumeState(L.Callback):
    """Stores the RNG states (Python, NumPy, torch CPU and CUDA) and the W&B run id in each
    checkpoint, and restores the RNG states when training resumes, after the sanity check, so a
    resumed run draws the same noise eps as an uninterrupted one."""

    def __init__(self) -> None:
        self.restored: dict[str, Any] | None = None
        self.trainer: L.Trainer | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "wandb_id": None,
        }
        logger = self.trainer.logger if self.trainer is not None else None
        if isinstance(logger, WandbLogger):
            state["wandb_id"] = logger.version
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restored is None:
            return
        state, self.restored = self.restored, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# The parts of a run's config that shape the parameters and their meaning: a run can only
# resume from a checkpoint trained with the same ones (``model.compile`` excepted).
ARCHITECTURE = ("model", "likelihood", "prior", "posterior", "data._target_")


def check_resumable(config: dict[str, Any], checkpoint: dict[str, Any], path: str | Path) -> None:
    """Raise ``CheckpointError`` if ``config`` (resolved) differs from the run that wrote
    ``checkpoint`` in anything of ``ARCHITECTURE``, naming the keys and the run's overrides."""
    saved = checkpoint.get("hyper_parameters", {}).get("config")
    if saved is None:
        raise CheckpointError(f"Checkpoint {path} holds no run configuration: it was not written "
                              "by vae-lightning's train.py, so it cannot be resumed.")
    saved, current = OmegaConf.create(saved), OmegaConf.create(config)
    differences = [
        f"{key}={_plain(saved, key)!r} (this run: {_plain(current, key)!r})"
        for key in sorted(set(_keys(saved)) | set(_keys(current)))
        if key != "model.compile" and _plain(saved, key) != _plain(current, key)
    ]
    if differences:
        overrides = Path(path).parent.parent / ".hydra" / "overrides.yaml"
        hint = (f" It was started with the overrides in {overrides}: "
                f"{' '.join(_overrides(overrides))}." if overrides.is_file() else "")
        raise CheckpointError(
            f"Checkpoint {path} was trained with a different model: {'; '.join(differences)}. "
            f"Resume with the settings the run was started with.{hint}"
        )


def _keys(config: DictConfig) -> list[str]:
    """The dotted keys under ``ARCHITECTURE``: each root's own keys, or the root itself."""
    keys = []
    for root in ARCHITECTURE:
        value = OmegaConf.select(config, root)
        keys += [f"{root}.{k}" for k in value] if isinstance(value, DictConfig) else [root]
    return keys


def _plain(config: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` as plain Python (None when absent)."""
    value = OmegaConf.select(config, key)
    return OmegaConf.to_object(value) if isinstance(value, DictConfig | ListConfig) else value


def _overrides(path: Path) -> list[str]:
    """The command-line overrides Hydra saved for a run, less ``ckpt_path``."""
    return [item for item in OmegaConf.load(path) if not item.startswith("ckpt_path=")]


def wandb_run_id(checkpoint: dict[str, Any]) -> str | None:
    """The W&B run id stored in a checkpoint by ``ResumeState``, if any."""
    return checkpoint.get("callbacks", {}).get(ResumeState.__qualname__, {}).get("wandb_id")
