"""The checkpoint file: reading it safely, writing it atomically, and what ``vae-train`` stores
in it beside the weights (the run's config and the data's identity: ``RunConfig``).

A checkpoint is untrusted input. It is read with ``torch.load(weights_only=True)`` (no arbitrary
unpickling), after its archive's checksums, and its content must have a checkpoint's structure.
The model it holds is rebuilt by ``rebuild`` (only the classes this package's config groups
name); a run goes on from it by ``resume``.
"""

from __future__ import annotations

import contextlib
import errno
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae_lightning import rundir
from vae_lightning.errors import CheckpointError, UnwritableError
from vae_lightning.files import atomic_write, kind, open_regular

CONFIG_KEY = "run_config"  # the run's resolved config, in every checkpoint train.py writes
DATA_KEY = "data_identity"  # what the data were (VAEDataModule.identity), likewise
# In a file vae-export wrote (the model without its training state): the source's SHA-256 and
# counters (``export.export``); such a file is not resumed (``resume.check_resumable``).
EXPORT_KEY = "exported_from"


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
    if not zipfile.is_zipfile(file):  # outside the try: its error is not wrapped again
        if path.suffix != ".ckpt":  # another file of the run (results.json, a figure)
            raise CheckpointError(f"ckpt_path={str(path)!r} is not a checkpoint but another "
                                  f"file; name a .ckpt file{_checkpoints_in(path.parent)}.")
        raise CheckpointError(
            f"Checkpoint {path} cannot be read: it is not a zip archive, the format "
            "torch.save writes (the file is corrupt or truncated, or not a checkpoint). "
            f"{USE_ANOTHER}")
    try:
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
        # Below 2**63, as a counter of torch's int64: a 10**400 was exported and evaluated, its
        # eval.json then a traceback in vae-compare (an int too large to convert to float).
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else \
                f"an integer of {value.bit_length()} bits"
            raise CheckpointError(f"Checkpoint {path}: its {key} is {shown}, not an integer "
                                  f"from 0 to 2**63 - 1. {USE_ANOTHER}")
    for name, tensor in state.items():
        if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (
                torch.int64, torch.int32, torch.bool)):
            raise CheckpointError(f"Checkpoint {path}: weight {name} is {tensor.dtype}, not a "
                                  f"real number type. {USE_ANOTHER}")
        # As the model holds them: float32, where a float64 1e300 is infinite.
        as_held = tensor.float() if tensor.dtype == torch.float64 else tensor
        if tensor.is_floating_point() and not torch.isfinite(as_held).all():
            bad = int((~torch.isfinite(as_held)).sum())
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


# Classes that moved to another module, the same class with the same parameters: a checkpoint
# written before the move names the old path, read as the new one (only these exact names).
# (nets.py split into conv_nets.py, e4c8586.)
MOVED = {f"vae_lightning.nets.{name}": f"vae_lightning.conv_nets.{name}"
         for name in ("ConvEncoder", "ConvDecoder", "ResNetEncoder", "ResNetDecoder")}


def _moved(node: Any) -> Any:
    """``node`` with every ``_target_`` that names a moved class renamed (``MOVED``)."""
    if isinstance(node, dict):
        return {key: MOVED.get(value, value) if key == "_target_" and isinstance(value, str)
                else _moved(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_moved(value) for value in node]
    return node


def run_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The run config a checkpoint of ``vae-train`` carries (classes that moved since it was
    written named where they are now)."""
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
                              "cannot be rebuilt from it. If you trained a model composed in "
                              "Python (a plain Lightning Trainer), compose the same model again "
                              "and load the weights: model.load_state_dict(torch.load(path, "
                              "weights_only=True)['state_dict']).")
    return _moved(config)


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
    # What the training split is drawn with: compared where it is read (a resume), both ways, so
    # that dropping data.std_key (the means trained on instead of draws) or changing
    # data.labelled or the seed (which labels the run sees) is found, not only adding them.
    if "train" in identity["splits"] or "train_std" in identity:
        for key, what in (("train_std", "the training points' standard deviations "
                                        "(data.std_key)"),
                          ("labelled", "the labelled training images (data.labelled)")):
            if saved.get(key) != identity.get(key):
                found.append(f"{what} {identity.get(key)!r} (the checkpoint's: "
                             f"{saved.get(key)!r})")
        points = saved.get("labelled_points")  # absent from checkpoints written before it
        if points is not None and identity.get("labelled") == saved.get("labelled") \
                and identity.get("labelled_points") != points:
            found.append("the labelled training images are other points (chosen by data.seed: "
                         f"SHA-256 {str(identity.get('labelled_points'))[:12]}..., the "
                         f"checkpoint's {str(points)[:12]}...)")
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


@contextlib.contextmanager
def refused_if_unwritable(path: str | Path) -> Iterator[None]:
    """A failed write of ``path`` inside the block raised as its ``UnwritableError``
    (``unwritable``: exit 74); any other exception as it is."""
    try:
        yield
    except BaseException as err:
        failure = unwritable(path, err)
        if failure is not None:
            raise failure from None
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that are atomic on every filesystem: written through a temporary file in
    the checkpoint's own directory, flushed to disk, renamed over its final name and the
    directory synced (``files.atomic_write``, owner-only permissions). A reader sees the old
    checkpoint or the new one, never a torn file; a failed write (a full disk, a kill) leaves no
    partial file under a final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with refused_if_unwritable(path), atomic_write(path, sync_directory=True) as file:
            torch.save(checkpoint, file)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (every argument of it works) that keeps its record of the
    run's files when the run directory was moved or copied before a resume. Lightning reloads
    the record (the best score, the best k files, the last file) only where the folder it was
    written in is this callback's ``dirpath``; otherwise it forgets the best score, so the next
    epoch's checkpoint became the best whatever its val/elbo (the one the run then tests), and
    the old best file stayed beside it. Here the record's files are looked for by name in this
    folder: those found are taken over (their paths in it), the others dropped. The record is
    untrusted (``resume.check_states`` confines its files to its own folder), so nothing
    outside this folder is ever named, read or deleted by it.

    Its ``state_key`` (the key of its state in a checkpoint) is ``ModelCheckpoint``'s, so that
    checkpoints written with Lightning's class resume with this one, and it is computed once
    (Lightning reads it at every hook of every step)."""

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"ModelCheckpoint{kwargs!r}"

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self.__dict__["_state_key"] = super().state_key
        return key

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("dirpath")
        if self.dirpath and isinstance(recorded, str) and recorded != self.dirpath:
            state_dict = relocated(state_dict, Path(self.dirpath))
        super().load_state_dict(state_dict)


def relocated(state: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A checkpoint callback's record (``state``, written in another folder) with its files
    named in ``folder`` where a file of that name is there, and left out where not."""
    def moved(name: Any) -> str:
        if not isinstance(name, str) or not name:
            return ""
        here = folder / Path(name).name
        return str(here) if here.is_file() else ""

    best_k = {moved(name): score for name, score in (state.get("best_k_models") or {}).items()}
    best_k.pop("", None)
    out = {**state, "dirpath": str(folder), "best_k_models": best_k,
           **{key: moved(state.get(key)) for key in ("best_model_path", "kth_best_model_path",
                                                   "last_model_path")}}
    if not out["best_model_path"]:
        out["best_model_score"] = None  # its file is not here: no best to beat
    return out


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
