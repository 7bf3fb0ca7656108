"""Exact resume: the random states and the loggers' run ids each checkpoint stores
(``ResumeState``), what a resumed run may change from the run that wrote its checkpoint
(``check_resumable``), and the runs its loggers go on with (``logger_runs``).
"""

from __future__ import annotations

import inspect
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

from vae_lightning.checkpoints import EXPORT_KEY, run_config
from vae_lightning.console import command
from vae_lightning.errors import CheckpointError


class ResumeState(L.Callback):
    """Stores the RNG states (Python, NumPy, torch CPU and CUDA), the W&B run id and the length
    of the epoch (``epoch_batches``) in each checkpoint, and restores the RNG states when
    training resumes, after the sanity check, so a resumed run draws the same noise eps as an
    uninterrupted one; tells the loggers that keep a history (``loggers.CSVLogger``) the step
    training resumes from. Refuses, before the first step, a checkpoint whose loop counters put
    training where its epoch would end at once (``check_epoch_position``)."""

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
            "epoch_batches": self._epoch_batches(),
            # The processes that shared the epoch: a resume mid-epoch must have as many.
            "world_size": self.trainer.world_size if self.trainer is not None else None,
        }
        for logger in self.trainer.loggers if self.trainer is not None else ():
            if isinstance(logger, WandbLogger):
                state["wandb_id"] = logger.version
            elif isinstance(logger, MLFlowLogger):
                state["mlflow_run_id"] = logger.run_id
        return state

    def _epoch_batches(self) -> int | None:
        """The batches of the epoch this checkpoint is taken in, as Lightning runs it: the
        trainer's count, or where a resume with shorter epochs (trainer.limit_train_batches,
        data.batch_size) starts past it, the batches trained and the one more that ends it."""
        trainer = self.trainer
        if trainer is None or not math.isfinite(trainer.num_training_batches):
            return None
        progress = trainer.fit_loop.epoch_loop.batch_progress
        ready = progress.current.ready
        if progress.is_last_batch:
            return ready
        return max(int(trainer.num_training_batches), ready + 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:  # before the history past it is dropped
            recorded = (self.restored or {}).get("epoch_batches")
            progress = trainer.fit_loop.epoch_loop.batch_progress
            check_epoch_position(progress.state_dict(),
                                 recorded if recorded is not None
                                 else trainer.num_training_batches, trainer.ckpt_path,
                                 recorded is None)
            check_world_continues((self.restored or {}).get("world_size"), trainer.world_size,
                                  progress.current.completed, progress.is_last_batch,
                                  trainer.ckpt_path)
        # A logger that keeps a run's history drops what lies past where this run starts: a
        # killed run's steps after the checkpoint, or (a fresh run, -1) all that a run stopped
        # here before its first checkpoint left (rundir.is_run).
        for logger in trainer.loggers:
            if hasattr(logger, "resume_at"):
                logger.resume_at(-1 if self.restored is None else trainer.global_step)
        if self.restored is None:
            return
        state, self.restored = self.restored, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            # One state per GPU of the machine that saved it: as many as this one has are
            # restored (set_rng_state_all would index GPUs this machine lacks).
            for device, cuda in enumerate(state["cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda, device)


def check_states(checkpoint: dict[str, Any], path: str | Path, model: L.LightningModule) -> None:
    """Refuse, before training, the training state of a checkpoint (untrusted) that a resume
    would act on but that is not what vae-train writes (``CheckpointError``):
    - the checkpoint callbacks' records of their files: Lightning deletes the worse of the best
      files and tests the best one by the paths recorded, so each must name a file in the
      folder the record is of (``dirpath``; a run moved elsewhere records its old folder, whose
      records Lightning does not reload, and ``train.py`` tests a best file only in the run's
      own folder);
    - the random states (``ResumeState``): each must be one its generator takes; its MLflow run
      id, one as MLflow takes them;
    - the fit loop's counters of epochs and of the epoch's batches: whole numbers >= 0, those of
      this epoch (``current``) at most those of the run (``total``), each ready >= started >=
      processed >= completed (Lightning's order), and where the checkpoint records its epoch's
      length, a position in it Lightning goes on from (``check_epoch_position``): an epoch whose
      counters a file claims done is skipped (the rest of it, silently);
    - the optimizers' states: the parameter groups of the model's optimizers, and per
      parameter, moments of its shape (fused Adam reads them without checking, out of bounds)
      and a step count, one number >= 0 (Adam's bias correction divides by 1 - beta^step).
    """
    callbacks = checkpoint.get("callbacks", {})
    if not isinstance(callbacks, dict):
        _refuse(path, "its callbacks' states are not a mapping")
    for key, state in callbacks.items():
        if isinstance(key, str) and key.startswith("ModelCheckpoint"):
            _check_files(state, path)
        elif key == "ResumeState":
            _check_random_states(state, path)
            _check_run_ids(state, path)
        elif key == "InitialBound":
            _check_initial_bound(state, path)
    _check_loops(checkpoint, path)
    _check_optimizers(checkpoint.get("optimizer_states", []), path, model)


def _refuse(path: str | Path, why: str) -> None:
    raise CheckpointError(f"Checkpoint {path} cannot be resumed: {why}, which vae-train does not "
                          "write (the file was altered). Resume from another checkpoint.")


def _check_initial_bound(state: Any, path: str | Path) -> None:
    """The untrained model's bound b0 a resume keeps (``InitialBound``): the diverged line
    b0 - max(|b0|, D) and results.json's initial/<split>_elbo are computed from it, so it is
    one finite number (or none: a run stopped before its first step) of the val or train
    split."""
    if not isinstance(state, dict):
        _refuse(path, "the untrained model's bound (InitialBound) is not a mapping")
    value, split = state.get("value"), state.get("split", "val")
    try:  # an integer beyond float's range (10**400) has no float: not one finite number
        finite = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(float(value)))
    except OverflowError:
        finite = False
    if value is not None and not finite:
        shown = (f"an integer of {value.bit_length()} bits" if isinstance(value, int)
                 else repr(str(value)[:80]))  # str() of an int beyond 4300 digits raises
        _refuse(path, f"the untrained model's bound is {shown}, not one finite number")
    if split not in ("val", "train"):
        _refuse(path, f"the untrained model's bound is of the split {str(split)[:80]!r}, not "
                "val or train")


def _check_run_ids(state: Any, path: str | Path) -> None:
    """The MLflow and W&B run ids a resume's loggers go on with (``logger_runs``): ones as each
    service takes them (its own rule), or none. A tampered MLflow id was MLflow's invalid-id
    traceback once the run had been set up; a tampered W&B id, W&B's refusal with advice to
    log in."""
    if not isinstance(state, dict):
        return
    for key, rule, words in (
            ("mlflow_run_id", MLFLOW_RUN_ID, "an MLflow run id (a letter or digit, then up to "
             "255 letters, digits, _ and -)"),
            ("wandb_id", WANDB_RUN_ID, "a W&B run id (up to 256 characters, not beginning or "
             "ending with a space, none of :;,#?/'\\ and no control characters)")):
        value = state.get(key)
        if value is not None and not (isinstance(value, str) and rule.fullmatch(value)):
            _refuse(path, f"its {key} is {str(value)[:80]!r}, not {words}")


MLFLOW_RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}", re.ASCII)  # MLflow's _validate_run_id
# W&B's Settings.validate_run_id (no reserved character, no whitespace at either end), and no
# backslash or control character: the id names a folder under <run dir>/wandb.
WANDB_RUN_ID = re.compile(r"(?=[^\x00-\x1f:;,#?/'\\]{1,256}$)\S(?:.*\S)?", re.DOTALL)


def _check_files(state: Any, path: str | Path) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("dirpath"), str):
        _refuse(path, "a checkpoint callback's state has no folder (dirpath)")
    folder = Path(state["dirpath"]).resolve()
    best_k = state.get("best_k_models", {})
    if not isinstance(best_k, dict):
        _refuse(path, "a checkpoint callback's best_k_models is not a mapping")
    for name in [*(state.get(k) for k in ("best_model_path", "kth_best_model_path",
                                          "last_model_path")), *best_k]:
        if name in (None, ""):
            continue
        if not isinstance(name, str) or Path(name).resolve().parent != folder:
            _refuse(path, f"a checkpoint callback's record names the file {name!r}, outside "
                    f"its folder {str(folder)!r}")
    # The scores Lightning compares each new checkpoint's with (a string or a list raised
    # a TypeError traceback after the resumed run's first validation, exit 1).
    for what, score in [*((k, state.get(k)) for k in ("best_model_score", "kth_value")),
                        *((f"best_k_models[{name!r}]", v) for name, v in best_k.items())]:
        if not _a_score(score):
            _refuse(path, f"a checkpoint callback's {what} is {score!r}, not one number (a "
                    "tensor of one element)")


def _a_score(value: Any) -> bool:
    """Whether ``value`` is what ModelCheckpoint records as a score: None (none yet), a real
    number, or a tensor of one real number."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return True
    return (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex()
            and (value.is_floating_point() or value.dtype in (torch.int64, torch.int32)))


def _check_random_states(state: Any, path: str | Path) -> None:
    try:
        random.Random().setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy(), pos, has_gauss, gauss))
        torch.Generator().set_state(state["torch"])
        cuda = state["cuda"]
        if not isinstance(cuda, list) or not all(
                isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                and t.shape == (CUDA_STATE_BYTES,) for t in cuda):
            raise TypeError("cuda")
    except Exception:  # noqa: BLE001 - whatever the generators refuse: one refusal
        _refuse(path, "its random states (ResumeState) are not states the random generators "
                "take")


# A CUDA generator's state as torch.cuda.get_rng_state gives it: the Philox seed (uint64) and
# offset (int64), 16 bytes (at::CUDAGeneratorImpl::get_state). Checked here: it is set only when
# training starts, and on a machine without a GPU never (a wrong one would pass to a GPU's run).
CUDA_STATE_BYTES = 16

COUNTERS = ("ready", "started", "processed", "completed")
# The checkpoint's key of the minibatches of its last training batch left untrained
# (``VAE.group_left``).
GROUP_LEFT = "steps_per_batch_left"


def _check_loops(checkpoint: dict[str, Any], path: str | Path) -> None:
    loops = checkpoint.get("loops")
    if loops is None:  # Lightning starts the loops afresh (a warning): nothing is skipped
        return
    fit = loops.get("fit_loop") if isinstance(loops, dict) else None
    if not isinstance(fit, dict):
        _refuse(path, "its loops' state has no fit loop (loops.fit_loop)")
    for key in ("epoch_progress", "epoch_loop.batch_progress"):
        progress = fit.get(key)
        scopes = [progress.get(scope) if isinstance(progress, dict) else None
                  for scope in ("current", "total")]
        if not all(isinstance(counts, dict) and all(
                type(counts.get(name)) is int and counts[name] >= 0 for name in COUNTERS)
                and [counts[name] for name in COUNTERS]
                == sorted((counts[name] for name in COUNTERS), reverse=True)
                for counts in scopes) or any(
                    scopes[0][name] > scopes[1][name] for name in COUNTERS):
            _refuse(path, f"its loop counters loops.fit_loop[{key!r}] are {progress!r}, not "
                    "whole numbers >= 0 with ready >= started >= processed >= completed and "
                    "current <= total")
    batches = fit["epoch_loop.batch_progress"]
    if not isinstance(batches.get("is_last_batch"), bool):
        _refuse(path, f"its loop state is_last_batch is {batches.get('is_last_batch')!r}, not "
                "true or false")
    state = checkpoint.get("callbacks", {}).get(ResumeState.__qualname__)
    recorded = state.get("epoch_batches") if isinstance(state, dict) else None
    if recorded is not None:
        if type(recorded) is not int or recorded < 0:
            _refuse(path, f"its epoch length (ResumeState epoch_batches) is {recorded!r}, not a "
                    "whole number >= 0")
        check_epoch_position(batches, recorded, path)


def check_epoch_position(batches: dict[str, Any], epoch_batches: float, path: str | Path,
                         this_run: bool = False) -> None:
    """Refuse (``CheckpointError``) counters of the epoch's batches (``batches``, Lightning's
    ``epoch_loop.batch_progress`` state) that Lightning would take for an epoch at its end when
    it is not, or not at its end when it is: the epoch's ``epoch_batches`` (the length the
    checkpoint records, else ``this_run``'s) are all trained exactly where its last batch was
    (``is_last_batch``), and the counters lie below them otherwise (a run stopped part-way by
    max_steps or max_samples; with data.steps_per_batch > 1 a batch is one of its groups).
    Lightning ends an epoch at ready == the epoch's batches, or at once after a last batch."""
    if not math.isfinite(epoch_batches):
        return
    ready, last = batches["current"]["ready"], batches["is_last_batch"]
    if (ready == epoch_batches) if last else (ready < epoch_batches or ready == 0):
        return
    where = (f"{ready} batches of its epoch trained, its last batch among them" if last
             else f"{ready} batches of its epoch trained, its last batch not yet")
    if this_run:  # a checkpoint from before epoch_batches was recorded
        why = (f"where this run's epoch has {int(epoch_batches)}: the file was altered, or the "
               "run that wrote it had other trainer.limit_train_batches or data.batch_size. "
               "Resume with those, or from another checkpoint.")
    else:
        why = (f"where the epoch it records has {int(epoch_batches)}, which vae-train does not "
               "write (the file was altered). Resume from another checkpoint.")
    raise CheckpointError(
        f"Checkpoint {path} cannot be resumed: its loop counters (loops.fit_loop["
        f"'epoch_loop.batch_progress'].current) say {where}, {why}")


def _check_optimizers(states: Any, path: str | Path, model: L.LightningModule) -> None:
    from vae_lightning import optimization

    configured = optimization.configure(model)
    entries = configured if isinstance(configured, list) else [configured]
    optimizers = [entry["optimizer"] if isinstance(entry, dict) else entry for entry in entries]
    if not isinstance(states, list) or len(states) != len(optimizers):
        _refuse(path, f"it holds {len(states) if isinstance(states, list) else 'no list of'} "
                f"optimizer states for the model's {len(optimizers)} optimizer(s)")
    for optimizer, saved in zip(optimizers, states):
        try:
            optimizer.load_state_dict(saved)
        except Exception:  # noqa: BLE001 - torch's own checks (group sizes, keys)
            _refuse(path, "its optimizer state does not fit the model's parameters")
        for group in optimizer.param_groups:
            for param in group["params"]:
                for name, value in optimizer.state.get(param, {}).items():
                    if not isinstance(value, torch.Tensor):
                        continue
                    # Only the step count is one number; every moment is the parameter's shape
                    # (a 0-d exp_avg passed the check, and fused Adam read past it: parameters
                    # of 1e29, then a segmentation fault).
                    if (value.shape != param.shape if name != "step" else value.dim() != 0) or (
                            value.is_floating_point() and not torch.isfinite(value).all()) or (
                            name == "step" and bool(value < 0)):
                        expected = ("a step count, one number >= 0" if name == "step" else
                                    "finite numbers of the parameter's shape")
                        _refuse(path, f"its optimizer state {name!r} of a parameter of shape "
                                f"{list(param.shape)} is {value.dtype} {list(value.shape)}, or "
                                f"not finite, where it is {expected}")


# What a resumed run may change: the training settings, not what the parameters are or mean. The
# optimizer's hyperparameters (optimizer.lr, ...) may change and apply from the resumed step on;
# its class may not (the saved state is of that class).
MAY_CHANGE = ("model.compile", "model.optimizer.")


def cut_short(batches_done: int, last_batch: bool) -> bool:
    """Whether the epoch that training was in when it stopped (``batches_done`` of its batches
    trained, ``last_batch``: the last of them) was cut short by a max_steps, max_samples or
    max_time stop. Lightning counts such an epoch as processed all the same."""
    return batches_done > 0 and not last_batch


def whole_epochs(completed: int, batches_done: int, last_batch: bool) -> int:
    """After ``trainer.fit``: the whole epochs trained, of Lightning's ``completed`` count, which
    by then counts the epoch training stopped in, cut short (``cut_short``) or not."""
    return completed - cut_short(batches_done, last_batch)


def saved_whole_epochs(checkpoint: dict[str, Any]) -> int:
    """The whole epochs trained when ``checkpoint`` was taken: during the fit, before Lightning
    completes the epoch it is taken in, so the epochs ``completed`` and that epoch if its last
    batch was trained."""
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    current = fit.get("epoch_progress", {}).get("current", {})
    processed, completed = current.get("processed", 0), current.get("completed", 0)
    last_batch = fit.get("epoch_loop.batch_progress", {}).get("is_last_batch", False)
    return completed + (processed > completed and bool(last_batch))


def reopen_stopped_epoch(checkpoint: dict[str, Any]) -> bool:
    """Mark the epoch of a checkpoint taken when training stopped part-way through it (by
    ``trainer.max_steps``, ``max_samples`` or ``max_time``) as not yet processed, so that a run
    continued from it with a longer length finishes that epoch: Lightning counts the cut epoch
    as processed (and would go on with the next epoch, or stop at once at the same
    ``max_epochs``), which the loop state of a checkpoint taken mid-epoch in training does not.
    The training sampler then skips the epoch's batches already trained
    (``data.sampling.ShardedBatchSampler``'s ``done``). Lightning reads these counters after
    the model's ``on_load_checkpoint``; an end-of-epoch checkpoint (its last batch trained) is
    left as it is. Returns whether the epoch was reopened."""
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
    if not isinstance(epochs, dict) or not isinstance(batches, dict):
        return False
    try:
        cut = (cut_short(batches["current"]["completed"], batches["is_last_batch"])
               and epochs["current"]["processed"] == epochs["current"]["completed"] + 1)
    except (KeyError, TypeError):
        return False
    if cut:
        for scope in ("current", "total"):
            epochs[scope]["processed"] -= 1
    return cut


def close_finished_epoch(checkpoint: dict[str, Any], iteration_based: bool) -> None:
    """Mark the epoch of a checkpoint taken at its end (its last batch trained, processed but
    not yet completed) as completed, and the next epoch's batches as not begun. Lightning
    takes that state, where the run is iteration-based (``trainer.max_steps``), for an epoch
    to restart at its end: it then trains the next epoch without counting it as begun (no
    ``on_train_epoch_start``; the epoch counted processed twice), so the checkpoints written
    after it hold counters no run writes, and the run resumed from one of them was refused.
    Lightning's epoch loop still restarts there (``iteration_based``) and counts one batch
    more for the loggers, as for a checkpoint taken before a batch's count (``on_train_batch_
    end``): that one is taken after it, so the count is lowered by one (the loggers' steps
    then are those of an uninterrupted run)."""
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
    if not isinstance(epochs, dict) or not isinstance(batches, dict):
        return
    try:
        current = epochs["current"]
        ended = (batches["is_last_batch"] is True and batches["current"]["completed"] > 0
                 and current["ready"] == current["started"] == current["processed"]
                 == current["completed"] + 1)
    except (KeyError, TypeError):
        return
    if not ended:
        return
    for scope in ("current", "total"):
        epochs[scope]["completed"] += 1
    batches["current"] = dict.fromkeys(batches["current"], 0)
    batches["is_last_batch"] = False
    state = fit.get("epoch_loop.state_dict")
    if iteration_based and isinstance(state, dict) \
            and type(state.get("_batches_that_stepped")) is int \
            and state["_batches_that_stepped"] > 0:
        state["_batches_that_stepped"] -= 1


def check_resumable(config: dict[str, Any], checkpoint: dict[str, Any], path: str | Path,
                    overrides: Sequence[str] = ()) -> None:
    """Raise ``CheckpointError`` if ``config`` (resolved) differs from the run that wrote
    ``checkpoint`` in its model, data set or ``seed``, naming the keys and the run's
    ``overrides``; or if ``checkpoint`` is a file vae-export wrote (``EXPORT_KEY``), which holds
    no training state to go on from."""
    exported = checkpoint.get(EXPORT_KEY)
    if exported is not None:
        source = (f" (the model of a checkpoint with SHA-256 {exported.get('sha256')}, epoch "
                  f"{exported.get('epoch')})" if isinstance(exported, dict) else "")
        raise CheckpointError(
            f"Checkpoint {path} was written by vae-export{source}: it holds the model without "
            "its training state (optimizer moments, loops, random states), so a run cannot go "
            "on from it. Resume from the run's own checkpoints/last.ckpt, or start a fresh run "
            "without ckpt_path.")
    saved = run_config(checkpoint, path)
    # data.steps_per_batch too: automatic (K = 1) and manual (K > 1) optimization count their
    # optimizer steps apart, so a switch lost count of the steps (and of the KL schedule's).
    # seed too: a resume restores the random states, but training after it draws from streams
    # seeded afresh from ``seed`` (validation's), so a resume that left out the run's seed=3
    # trained on to other numbers than the uninterrupted run, and results.json said seed 0.
    keys = sorted(set(_leaves(saved, "model")) | set(_leaves(config, "model"))
                  | {"data._target_", "data.steps_per_batch", "seed"},
                  key=lambda key: (key.count("."), key))
    differences, shown = [], set()
    for key in keys:
        pair = (_at(saved, key), _at(config, key))
        if key == "data.steps_per_batch":  # 1 where a config (an older run's) has none
            pair = tuple(1 if value is None else value for value in pair)
        if key == "seed" and pair[0] is None:  # a run config without one: nothing to compare
            continue
        if not _holds(saved, key) and pair[1] == _default(config, key):
            continue  # an argument added since the run started, at the default it was built with
        if pair[0] == pair[1] or (key.startswith(MAY_CHANGE)
                                  and key != "model.optimizer._target_"):
            continue
        leaf = (key.rsplit(".", 1)[-1], repr(pair))
        if leaf in shown:  # the same value passed on to a part (model.encoder.latent, ...)
            continue
        shown.add(leaf)
        differences.append(f"{key}={pair[0]!r} (this run: {pair[1]!r})")
    if differences:
        hint = (f" It was started with: {command(*overrides) or '(no overrides)'}."
                if overrides is not None else "")
        raise CheckpointError(
            f"Checkpoint {path} was trained with a different model, data or seed: "
            f"{'; '.join(differences)}. Resume with the settings the run was started with.{hint}")


def check_epoch_continues(config: dict[str, Any], checkpoint: dict[str, Any],
                          path: str | Path) -> None:
    """Raise ``CheckpointError`` if ``checkpoint`` was taken part-way through its epoch (a run
    stopped by max_steps, max_samples or max_time) and ``config`` (resolved) goes on with another
    ``data.batch_size``: the training sampler skips the epoch's batches already trained
    (``ShardedBatchSampler``'s ``done``), counted in batches, so batches of another size
    skipped other points: a smaller size trained part of the epoch twice, a larger one left
    part of it out (or, past the new epoch's length, trained the whole epoch again), silently.
    A checkpoint taken at an epoch's end goes on with any batch size."""
    saved = run_config(checkpoint, path)
    before, now = _at(saved, "data.batch_size"), _at(config, "data.batch_size")
    if before is None or before == now:
        return
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    batches = fit.get("epoch_loop.batch_progress") if isinstance(fit, dict) else None
    try:
        done, last = batches["current"]["completed"], batches["is_last_batch"]
    except (KeyError, TypeError):
        return  # no loop state to go on from mid-epoch (check_states judges the file)
    if type(done) is not int:
        return
    epoch = checkpoint.get("epoch")
    if cut_short(done, bool(last)):
        where = f"part-way through an epoch ({done} batches of data.batch_size={before!r} trained)"
        stop = (f" and trainer.max_epochs={epoch + 1} to stop at its end"
                if type(epoch) is int and epoch >= 0 else "")
    elif type(left := checkpoint.get(GROUP_LEFT)) is int and left > 0:
        # A stop inside the epoch's last batch of minibatches (data.steps_per_batch).
        where = (f"part-way through its epoch's last batch of minibatches of data.batch_size="
                 f"{before!r} ({left} left untrained)")
        stop = " and a trainer.max_steps that trains them"
    else:
        return
    raise CheckpointError(
        f"Checkpoint {path} was taken {where}, and this run goes on with data.batch_size="
        f"{now!r}: the rest of the epoch is found by counting batches, so batches of another "
        "size would train some of its points twice or leave some out. Finish the epoch with "
        f"data.batch_size={before!r}{stop}, then resume from its end with the new size.")


def check_world_continues(recorded: Any, world: int, batches_done: int, last_batch: bool,
                          path: str | Path) -> None:
    """Raise ``CheckpointError`` if the checkpoint was taken part-way through its epoch by
    ``recorded`` processes (DDP ranks) and this run has another number (``world``): each rank's
    share of the epoch (n // world points, ``ShardedBatchSampler``) and the batches of it
    already trained are counted per rank, so other shares would train some points twice and
    leave others out, as another ``data.batch_size`` would (``check_epoch_continues``). A
    checkpoint that records no number (older ones) is not judged."""
    if type(recorded) is not int or recorded == world or not cut_short(batches_done,
                                                                       last_batch):
        return
    raise CheckpointError(
        f"Checkpoint {path} was taken part-way through an epoch ({batches_done} batches trained "
        f"on each of {recorded} processes), and this run has {world}: each process's share of "
        "the epoch is counted in batches of its own share, so another number would train some "
        "points twice and leave others out. Finish the epoch with as many processes "
        f"(trainer.devices x trainer.num_nodes = {recorded}) and trainer.max_epochs set to stop "
        "at its end, then resume from its end with the new number.")


def _leaves(config: dict[str, Any], root: str) -> list[str]:
    """The dotted keys of the leaves under ``root``."""
    node = _at(config, root)
    if not isinstance(node, dict):
        return [root]
    return [leaf for key in node for leaf in _leaves(config, f"{root}.{key}")]


def _holds(config: dict[str, Any], dotted: str) -> bool:
    """Whether ``config`` has the key ``dotted`` (at any value, null included)."""
    parent, _, last = dotted.rpartition(".")
    node = _at(config, parent) if parent else config
    return isinstance(node, dict) and last in node


def _default(config: dict[str, Any], dotted: str) -> Any:
    """The default of the constructor argument ``dotted`` names, read from the class the
    current (trusted) ``config`` builds there (its ``_target_``); a marker equal to nothing
    where there is none. A run started before the argument existed was built with it."""
    parent, _, name = dotted.rpartition(".")
    target = _at(config, f"{parent}._target_") if parent else None
    try:
        parameter = inspect.signature(get_class(target)).parameters[name]
    except (ImportError, ValueError, TypeError, KeyError, AttributeError):
        return _NO_DEFAULT  # no class there, or no such argument: nothing to compare with
    default = parameter.default
    if default is inspect.Parameter.empty:
        return _NO_DEFAULT
    return list(default) if isinstance(default, tuple) else default  # as a config holds it


_NO_DEFAULT = object()


def _at(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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
