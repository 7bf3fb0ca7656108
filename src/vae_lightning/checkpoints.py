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
import zipfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_object, instantiate
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from vae_lightning import rundir
from vae_lightning.errors import CheckpointError, UnwritableError, UserError
from vae_lightning.files import kind, open_regular

log = logging.getLogger(__name__)

CONFIG_KEY = "run_config"  # the run's resolved config, in every checkpoint train.py writes
DATA_KEY = "data_identity"  # what the data were (VAEDataModule.identity), likewise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling), or say why not.

    Before anything is unpickled: the path names a local regular file (not a URL, directory,
    FIFO or device), an archive whose every member matches its CRC-32 (a flipped bit anywhere in
    the weights is refused, not loaded); after: the content has a checkpoint's structure and its
    weights are finite real numbers (``check_structure``)."""
    text = str(path)
    if "://" in text:
        raise CheckpointError(
            f"ckpt_path={text!r} is a URL: checkpoints are read from local files only, nothing "
            "is downloaded. Download the file and give its path.")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a directory; name a .ckpt file"
                              f"{_checkpoints_in(path)}.")
    if kind(path) == "missing":
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    with open_regular(path, CheckpointError, "a checkpoint (.ckpt) file") as file:
        _check_archive(file, path)
        file.seek(0)
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:
            # torch's message suggests weights_only=False, which would run the file's code: never.
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            reason = reason.split(" (1) ")[0].split("Re-running `torch.load`")[0].strip()
            raise CheckpointError(
                f"Checkpoint {path} cannot be read ({reason}): the file is corrupt or truncated, "
                f"or not a vae-lightning checkpoint. {USE_ANOTHER}") from None
    check_structure(checkpoint, path)
    return checkpoint


USE_ANOTHER = ("Use another file of the run's checkpoints/ directory (last.ckpt or a "
               "best-*.ckpt).")


def _checkpoints_in(directory: Path) -> str:
    """Where the .ckpt files of ``directory`` (a run directory, or its checkpoints/) are."""
    found = (sorted(directory.glob("*.ckpt"))
             or sorted(directory.glob(f"{rundir.CHECKPOINTS}/*.ckpt")))
    if not found:
        return f" (none is in it; a run keeps them in <run>/{rundir.CHECKPOINTS}/)"
    last = next((f for f in found if f.name == rundir.LAST), found[0])
    return f", e.g. {last}"


def _check_archive(file: Any, path: Path) -> None:
    """Refuse a file that is not a zip archive (torch.save's format) or whose members do not
    match their CRC-32: the checkpoint changed after it was written (a disk or copy error, or
    tampering)."""
    try:
        if not zipfile.is_zipfile(file):
            raise CheckpointError(
                f"Checkpoint {path} cannot be read: it is not a zip archive, the format "
                "torch.save writes (the file is corrupt or truncated, or not a checkpoint). "
                f"{USE_ANOTHER}")
        file.seek(0)
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated (its archive cannot be "
                              f"read: {err}). {USE_ANOTHER}") from None
    if bad is not None:
        raise CheckpointError(
            f"Checkpoint {path} is corrupt: its part {bad!r} does not match the checksum written "
            "with it (the file changed after it was saved: a disk or copy error, or tampering), "
            f"so its weights are not loaded. {USE_ANOTHER}")


def check_structure(checkpoint: Any, path: str | Path) -> None:
    """Refuse content that is not a checkpoint of vae-train: not a mapping; weights that are not
    a mapping of names to real tensors, or that hold NaN or infinite values; counters (epoch,
    global_step, samples_seen) that are not non-negative integers."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(checkpoint).__name__}, not a "
                              f"checkpoint (a mapping with state_dict). {USE_ANOTHER}")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        got = type(state).__name__ if not isinstance(state, dict) else "a mapping of other values"
        raise CheckpointError(f"Checkpoint {path}: its state_dict is {got}, not a mapping of "
                              f"parameter names to tensors. {USE_ANOTHER}")
    for key in ("epoch", "global_step", "samples_seen"):
        value = checkpoint.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"Checkpoint {path}: its {key} is {value!r}, not a "
                                  f"non-negative integer. {USE_ANOTHER}")
    for name, tensor in state.items():
        if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (
                torch.int64, torch.int32, torch.bool)):
            raise CheckpointError(f"Checkpoint {path}: weight {name} is {tensor.dtype}, not a "
                                  f"real number type. {USE_ANOTHER}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"Checkpoint {path}: weight {name} holds {bad} NaN or infinite value(s), so the "
                f"model it holds computes nothing meaningful. {USE_ANOTHER} (training keeps the "
                "last finite state as a best-*.ckpt or nonfinite-step*.ckpt).")


def _flat_run_config(checkpoint: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` holds a flat run config of an early vae-train (the model's sizes as
    top-level keys rather than nested parts): Lightning's ``hyper_parameters`` with a ``config``
    whose model is one of this package's. Its models are not rebuilt, because a flat config does
    not name the parts (encoder, decoder, prior, objective) this version composes."""
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
                f"Checkpoint {path} was written by an early vae-lightning: its run configuration "
                "is the flat form (model.encoder_hidden, top-level likelihood/prior/posterior), "
                "which does not name the parts this version composes, so it is not rebuilt. "
                "Evaluate, sample or resume it with the version of vae-lightning that wrote it "
                "(its git history has the last one that read flat configurations), or train "
                "the model again.")
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
        if target is not None and not isinstance(target, str):
            found.append(f"{key}._target_ (a {type(target).__name__}, not a class name)")
        elif target is not None and target not in trusted:
            found.append(f"{key}._target_={target!r}")
        for name, value in node.items():
            found += _untrusted(value, f"{key}.{name}", trusted)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _untrusted(value, f"{key}[{i}]", trusted)
    elif isinstance(node, str) and "${" in node:
        found.append(f"{key}={node!r} (an interpolation)")
    return found


def trusted_class(node: dict[str, Any], key: str, path: str | Path,
                  trusted: Sequence[str] = ()) -> Any:
    """The class (or function) the config ``node`` read from the checkpoint ``path`` names, if
    every target in it is one of this package's (or of ``trusted``); else refuse, naming them."""
    _refuse_untrusted(node, key, path, trusted)
    return get_object(node["_target_"])


def build_trusted(node: dict[str, Any], key: str, path: str | Path,
                  trusted: Sequence[str] = (), **kwargs: Any) -> Any:
    """Instantiate the config ``node`` read from the checkpoint ``path`` if every target it names
    is one of this package's (or of ``trusted``); else refuse, naming them."""
    _refuse_untrusted(node, key, path, trusted)
    try:
        return instantiate(OmegaConf.create(node), **kwargs)
    except Exception as err:
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):  # e.g. a DataError: its own message and exit code
            raise cause from None
        raise CheckpointError(f"Checkpoint {path}: its {key} config cannot be built: "
                              f"{_reason(err)}.") from None


def _refuse_untrusted(node: Any, key: str, path: str | Path, trusted: Sequence[str]) -> None:
    refused = _untrusted(node, key, shipped_targets() | frozenset(trusted))
    if not isinstance(node, dict) or "_target_" not in node:
        refused.insert(0, f"{key} without a _target_")
    if refused:
        raise CheckpointError(
            f"Checkpoint {path} asks to build {', '.join(refused)}, which vae-lightning does not "
            "build: a checkpoint is untrusted input, so nothing in it chooses what code runs. If "
            "the checkpoint is yours and names your own classes, pass their dotted names as "
            "trusted (VAE.load_from_checkpoint(path, trusted=[...]), eval.trusted=[...]).")


def _reason(err: BaseException) -> str:
    """What went wrong, from the innermost cause (Hydra wraps a constructor's error in a header
    line naming the target): every line of it, joined."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip().rstrip(".") for line in str(err).strip().splitlines() if line.strip()]
    return "; ".join(lines[:6]) or type(err).__name__


def load_model(path: str | Path, model_class: type, map_location: Any = "cpu",
               trusted: Sequence[str] = ()):
    """``(model, run config, raw checkpoint)`` of a ``vae-train`` checkpoint: the model (an
    instance of ``model_class``, e.g. ``module.VAE``) rebuilt from the saved config with the
    saved weights, in eval mode.

    The config's sizes are untrusted too: the model is first built on PyTorch's meta device
    (nothing allocated) and its parameter shapes compared with the saved weights, so a config
    that asks for more than the weights hold is refused before any memory is taken; after
    loading, the data shape the model was built for must be the shape its networks read and
    write (``_check_data_shape``)."""
    checkpoint = read_checkpoint(path)
    config = run_config(checkpoint, path)
    check_sizes(config, checkpoint["state_dict"], path, trusted)
    model = build_trusted(config["model"], "model", path, trusted)
    if not isinstance(model, model_class):
        raise CheckpointError(f"Checkpoint {path}: its model config builds a "
                              f"{type(model).__name__}, not a {model_class.__name__}.")
    check_fit(model.state_dict(), checkpoint["state_dict"], path)
    model.load_state_dict(checkpoint["state_dict"])
    _check_data_shape(model, path)
    model.samples_seen = checkpoint.get("samples_seen", 0)
    return model.to(map_location).eval(), config, checkpoint


PARTS = ("encoder", "decoder", "prior")  # the model's parts that hold its sizes


def check_sizes(config: dict[str, Any], state: dict[str, torch.Tensor], path: str | Path,
                trusted: Sequence[str] = ()) -> None:
    """Build the model's parts from the checkpoint's config on PyTorch's meta device (nothing
    is allocated) and refuse sizes that do not match the saved weights: a config that asks for
    networks larger than its weights is refused before any memory is taken."""
    model = config.get("model")
    if not isinstance(model, dict):
        return
    with torch.device("meta"):
        parts = {key: build_trusted(model[key], f"model.{key}", path, trusted)
                 for key in PARTS if isinstance(model.get(key), dict)}
    check_parts(parts, state, path)


def check_parts(parts: dict[str, torch.nn.Module], state: dict[str, torch.Tensor],
                path: str | Path) -> None:
    """``check_fit`` of the weights of the model's parts (``PARTS``, built on any device)."""
    own = {f"{key}.{name}": tensor for key, part in parts.items()
           for name, tensor in part.state_dict().items()}
    check_fit(own, {k: v for k, v in state.items() if k.split(".")[0] in parts}, path)


def check_fit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
              path: str | Path) -> None:
    """Refuse weights ``state`` that do not fit the model's ``own`` state (shapes and names), or
    whose type differs in kind (an integer or boolean tensor where the model holds real numbers:
    copied in, it would load silently), naming the keys and shapes."""
    for name, tensor in own.items():
        if name in state and tensor.is_floating_point() and not state[name].is_floating_point():
            raise CheckpointError(f"Checkpoint {path}: weight {name} is {state[name].dtype}, "
                                  f"where the model holds {tensor.dtype}. {USE_ANOTHER}")
    problems = [f"{name} has shape {list(state[name].shape)} in the file, "
                f"{list(tensor.shape)} in the model" for name, tensor in own.items()
                if name in state and state[name].shape != tensor.shape]
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    if missing:
        problems.append(f"missing: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected[:5])}"
                        + (" ..." if len(unexpected) > 5 else ""))
    if problems:
        raise CheckpointError(f"Checkpoint {path}: its weights do not fit the model its config "
                              f"builds ({'; '.join(problems[:8])}). {USE_ANOTHER}")


@torch.no_grad()
def _check_data_shape(model: torch.nn.Module, path: str | Path) -> None:
    """The model's ``data_shape`` (what bits/dim and evaluation read) must be what its encoder
    takes and its decoder gives: one image of that shape through both."""
    if model.data_shape is None:
        return
    shape = tuple(model.data_shape)
    try:
        q = model.encoder(torch.zeros(1, *shape))
        event = tuple(model.decoder(model.encoder.location(q)).event_shape)
    except (RuntimeError, ValueError) as err:
        event = f"an error ({_reason(err)})"
    if event != shape:
        raise CheckpointError(
            f"Checkpoint {path}: its model.data_shape={list(shape)} is not the shape of the "
            f"images its networks were built for (the decoder gives {event}); the file is "
            f"inconsistent, so nothing is computed from it. {USE_ANOTHER}")


WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                  errno.EFBIG}
# What torch's zip writer says when the disk fills or a file-size limit stops a write.
TORCH_WRITE_FAILURES = ("file write failed", "PytorchStreamWriter failed", "unexpected pos",
                        "inline_container")


def unwritable(path: str | Path, err: BaseException) -> UnwritableError | None:
    """The ``UnwritableError`` for a failed write of ``path``, if ``err`` is one (torch reports
    a full disk or a file-size limit as a RuntimeError of its stream writer)."""
    if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
        reason = err.strerror
    elif isinstance(err, RuntimeError) and any(words in str(err)
                                               for words in TORCH_WRITE_FAILURES):
        reason = "the write failed (a full disk, or a file-size limit)"
    else:
        return None
    return UnwritableError(
        f"Cannot write {path}: {reason}. Nothing is left under that name (the previous file, if "
        "any, is intact); free space or fix the directory's permissions and run the command "
        "again (a training run goes on from its last checkpoint with "
        "ckpt_path=<run>/checkpoints/last.ckpt).")


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
    model can be rebuilt from the file alone, and the data's identity
    (``checkpoint["data_identity"]``: shape, split sizes, content hashes), against which
    evaluation and resume check the data they read; logs the config to the loggers as
    hyperparameters."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        if hasattr(trainer.datamodule, "identity"):
            checkpoint[DATA_KEY] = trainer.datamodule.identity()

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
            "mlflow_run_id": None,
        }
        for logger in self.trainer.loggers if self.trainer is not None else ():
            if isinstance(logger, WandbLogger):
                state["wandb_id"] = logger.version
            elif isinstance(logger, MLFlowLogger):
                state["mlflow_run_id"] = logger.run_id
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


def data_differences(checkpoint: dict[str, Any], identity: dict[str, Any]) -> list[str] | None:
    """How the data of ``identity`` (``VAEDataModule.identity``) differ from those the checkpoint
    was trained with, for the splits both name: ``[]`` when they are the same, None when the
    checkpoint records no identity (written before it did)."""
    saved = checkpoint.get(DATA_KEY)
    if not isinstance(saved, dict):
        return None
    found = [f"{key} {identity.get(key)!r} (the checkpoint's: {saved.get(key)!r})"
             for key in ("data", "shape", "scale", "binarize")
             if saved.get(key) != identity.get(key)]
    saved_splits = saved.get("splits") if isinstance(saved.get("splits"), dict) else {}
    for split, now in identity["splits"].items():
        then = saved_splits.get(split)
        if not isinstance(then, dict):
            continue
        if then.get("size") != now["size"]:
            found.append(f"the {split} split has {now['size']} images (the checkpoint's: "
                         f"{then.get('size')!r})")
        elif then.get("sha256") != now["sha256"]:
            found.append(f"the {split} split's images or labels differ (SHA-256 "
                         f"{now['sha256'][:12]}..., the checkpoint's "
                         f"{str(then.get('sha256'))[:12]}...)")
    return found


def logger_runs(checkpoint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The arguments that make the W&B and MLflow loggers of a resumed run go on with the runs
    the checkpoint's run started (their ids, stored by ``ResumeState``), by logger key."""
    state = checkpoint.get("callbacks", {}).get(ResumeState.__qualname__, {})
    state = state if isinstance(state, dict) else {}
    runs = {}
    if isinstance(state.get("wandb_id"), str):
        runs["wandb"] = {"id": state["wandb_id"], "resume": "allow"}
    if isinstance(state.get("mlflow_run_id"), str):
        runs["mlflow"] = {"run_id": state["mlflow_run_id"]}
    return runs
