"""Checkpoints: the run's config stored in them, safe reading, models rebuilt from them, and
exact resume.

A checkpoint is untrusted input. It is read with ``torch.load(weights_only=True)`` (no arbitrary
unpickling), and the config it carries builds only the classes this package's own config groups
name (and those a user passes as ``trusted``): nothing in the file chooses what code runs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from vae_lightning.errors import CheckpointError, UnwritableError

log = logging.getLogger(__name__)

CONFIG_KEY = "run_config"  # the run's resolved config, in every checkpoint train.py writes


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling), or say why not."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a directory; name a .ckpt file in it, e.g. "
                              f"{path / 'last.ckpt'}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint {path} does not exist.") from None
    except Exception as err:
        # torch's message suggests weights_only=False, which would run the file's code: never.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason.split(" (1) ")[0].split("Re-running `torch.load`")[0].strip()
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({reason}): the file is corrupt or truncated, or "
            "not a vae-lightning checkpoint. Use another file of the run's checkpoints/ "
            "directory (last.ckpt or a best-*.ckpt)."
        ) from None


def _flat_run_config(checkpoint: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` holds the run config of vae-train before the composer redesign:
    Lightning's ``hyper_parameters`` with a ``config`` whose model is one of this package's."""
    hyper = checkpoint.get("hyper_parameters")
    config = hyper.get("config") if isinstance(hyper, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    target = model.get("_target_") if isinstance(model, dict) else None
    return isinstance(target, str) and target.startswith("vae_lightning.")


def run_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The run config a checkpoint of ``vae-train`` carries."""
    config = checkpoint.get(CONFIG_KEY)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        if _flat_run_config(checkpoint):
            raise CheckpointError(
                f"Checkpoint {path} was written by vae-lightning before the composer (commit "
                "be3ec97): its run configuration is the older flat form (model.encoder_hidden, "
                "top-level likelihood/prior/posterior), which this version does not rebuild. "
                "Evaluate, sample or resume it with the code that wrote it (git checkout "
                "fe83bda, the last commit before be3ec97), or train the model again.")
        raise CheckpointError(f"Checkpoint {path} holds no vae-lightning run configuration: it "
                              "was not written by vae-train (train.py), so the model it holds "
                              "cannot be rebuilt.")
    return config


@functools.cache
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` named by this package's config groups: what a checkpoint may build."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                found.add(node["_target_"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    def files(folder: Any) -> Iterable[Any]:
        for entry in folder.iterdir():
            if entry.is_dir():
                yield from files(entry)
            elif entry.name.endswith(".yaml"):
                yield entry

    for file in files(resources.files("vae_lightning.conf")):
        walk(OmegaConf.to_container(OmegaConf.create(file.read_text())))
    return frozenset(found)


def _untrusted(node: Any, key: str, trusted: frozenset[str]) -> list[str]:
    """Why ``node`` (plain config from a checkpoint) must not be built: unknown targets and
    interpolations, each with its key."""
    found = []
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and target not in trusted:
            found.append(f"{key}._target_={target!r}")
        for name, value in node.items():
            found += _untrusted(value, f"{key}.{name}", trusted)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _untrusted(value, f"{key}[{i}]", trusted)
    elif isinstance(node, str) and "${" in node:
        found.append(f"{key}={node!r} (an interpolation)")
    return found


def build_trusted(node: dict[str, Any], key: str, path: str | Path,
                  trusted: Sequence[str] = (), **kwargs: Any) -> Any:
    """Instantiate the config ``node`` read from the checkpoint ``path`` if every target it names
    is one of this package's (or of ``trusted``); else refuse, naming them."""
    refused = _untrusted(node, key, shipped_targets() | frozenset(trusted))
    if not isinstance(node, dict) or "_target_" not in node:
        refused.insert(0, f"{key} without a _target_")
    if refused:
        raise CheckpointError(
            f"Checkpoint {path} asks to build {', '.join(refused)}, which vae-lightning does not "
            "build: a checkpoint is untrusted input, so nothing in it chooses what code runs. If "
            "the checkpoint is yours and names your own classes, pass their dotted names as "
            "trusted (VAE.load_from_checkpoint(path, trusted=[...]), eval.trusted=[...]).")
    try:
        return instantiate(OmegaConf.create(node), **kwargs)
    except Exception as err:
        raise CheckpointError(f"Checkpoint {path}: its {key} config cannot be built "
                              f"({type(err).__name__}: {str(err).splitlines()[0]}).") from None


def load_model(path: str | Path, map_location: Any = "cpu", trusted: Sequence[str] = ()):
    """``(model, run config, raw checkpoint)`` of a ``vae-train`` checkpoint: the model rebuilt
    from the saved config with the saved weights, in eval mode."""
    checkpoint = read_checkpoint(path)
    config = run_config(checkpoint, path)
    model = build_trusted(config["model"], "model", path, trusted)
    from vae_lightning.module import VAE

    if not isinstance(model, VAE):
        raise CheckpointError(f"Checkpoint {path}: its model config builds a "
                              f"{type(model).__name__}, not a VAE.")
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise CheckpointError(f"Checkpoint {path}: its weights do not fit the model its config "
                              f"builds ({reason}).") from None
    model.samples_seen = checkpoint.get("samples_seen", 0)
    return model.to(map_location).eval(), config, checkpoint


WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def unwritable(path: str | Path, err: BaseException) -> UnwritableError | None:
    """The ``UnwritableError`` for a failed write of ``path``, if ``err`` is one (torch reports
    a full disk as a RuntimeError of its stream writer)."""
    if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
        reason = err.strerror
    elif isinstance(err, RuntimeError) and any(
            words in str(err) for words in ("file write failed", "PytorchStreamWriter failed")):
        reason = "the write failed (is the disk full?)"
    else:
        return None
    return UnwritableError(f"Cannot write {path}: {reason}. Nothing is left under that name (the "
                           "previous file, if any, is intact); free space or fix the directory's "
                           "permissions, then resume with ckpt_path.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that are atomic on every filesystem: the file is written to a temporary
    file in the checkpoint's own directory, flushed to disk (fsync), then renamed over its final
    name (``os.replace``, atomic within one filesystem) and the directory synced. A reader sees
    the old checkpoint or the new one, never a torn file; a failed write (a full disk, a kill)
    leaves no partial file under a final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException as err:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            failure = unwritable(path, err)
            if failure is not None:
                raise failure from None
            raise


class RunConfig(L.Callback):
    """Puts the run's resolved config into every checkpoint (``checkpoint["run_config"]``), so the
    model can be rebuilt from the file alone, and logs it to the loggers as hyperparameters."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config

    @staticmethod
    def of(trainer: L.Trainer) -> dict[str, Any] | None:
        """The config of the ``RunConfig`` among ``trainer``'s callbacks, if any."""
        return next((c.config for c in trainer.callbacks if isinstance(c, RunConfig)), None)


class ResumeState(L.Callback):
    """Stores the RNG states (Python, NumPy, torch CPU and CUDA) and the W&B run id in each
    checkpoint, and restores the RNG states when training resumes, after the sanity check, so a
    resumed run draws the same noise eps as an uninterrupted one; tells the loggers that keep a
    history (``loggers.CSVLogger``) the step training resumes from."""

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
        for logger in trainer.loggers:  # a logger that keeps a resumed run's history
            if hasattr(logger, "resume_at"):
                logger.resume_at(trainer.global_step)
        state, self.restored = self.restored, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# What a resumed run may change: the training settings, not what the parameters are or mean. The
# optimizer's hyperparameters (optimizer.lr, ...) may change and apply from the resumed step on;
# its class may not (the saved state is of that class).
MAY_CHANGE = ("model.compile", "model.optimizer.")


def check_resumable(config: dict[str, Any], checkpoint: dict[str, Any], path: str | Path,
                    overrides: Sequence[str] = ()) -> None:
    """Raise ``CheckpointError`` if ``config`` (resolved) differs from the run that wrote
    ``checkpoint`` in its model or data set, naming the keys and the run's ``overrides``."""
    saved = run_config(checkpoint, path)
    keys = sorted(set(_leaves(saved, "model")) | set(_leaves(config, "model")) | {"data._target_"},
                  key=lambda key: (key.count("."), key))
    differences, shown = [], set()
    for key in keys:
        pair = (_at(saved, key), _at(config, key))
        if pair[0] == pair[1] or (key.startswith(MAY_CHANGE)
                                  and key != "model.optimizer._target_"):
            continue
        leaf = (key.rsplit(".", 1)[-1], repr(pair))
        if leaf in shown:  # the same value passed on to a part (model.encoder.latent, ...)
            continue
        shown.add(leaf)
        differences.append(f"{key}={pair[0]!r} (this run: {pair[1]!r})")
    if differences:
        hint = (f" It was started with: {' '.join(overrides) or '(no overrides)'}."
                if overrides is not None else "")
        raise CheckpointError(
            f"Checkpoint {path} was trained with a different model or data: "
            f"{'; '.join(differences)}. Resume with the settings the run was started with.{hint}")


def _leaves(config: dict[str, Any], root: str) -> list[str]:
    """The dotted keys of the leaves under ``root``."""
    node = _at(config, root)
    if not isinstance(node, dict):
        return [root]
    return [leaf for key in node for leaf in _leaves(config, f"{root}.{key}")]


def _at(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def wandb_run_id(checkpoint: dict[str, Any]) -> str | None:
    """The W&B run id stored in a checkpoint by ``ResumeState``, if any."""
    return checkpoint.get("callbacks", {}).get(ResumeState.__qualname__, {}).get("wandb_id")
