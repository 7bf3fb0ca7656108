"""The VAE LightningModule: composes q(z|x), p(x|z), p(z) and an objective, trains and logs the
bound, and is the model users load and use (``encode``, ``decode``, ``sample``, ...: its
``inference.Inference`` methods). Its optimizers are set up in ``optimization``; a non-finite
loss stops the run through ``divergence``."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from vae_lightning import divergence, optimization, resume
from vae_lightning.args import PositiveInt, checked
from vae_lightning.errors import CheckpointError, ConfigError
from vae_lightning.graphs import GraphedStep, runtime_problems
from vae_lightning.inference import Inference
from vae_lightning.likelihoods import Decoder, code_length
from vae_lightning.metrics import BITS, TERMS, BoundMean, BoundTerm
from vae_lightning.objectives import Objective
from vae_lightning.parts import Bound, Conditional, Stepped, refuse_unfit
from vae_lightning.posteriors import Encoder
from vae_lightning.priors import Prior
from vae_lightning.rebuild import device_of, load_model

STAGES = ("train", "val", "test")
ADAM = functools.partial(torch.optim.Adam, lr=1e-3)  # the default optimizer
# Attributes set at every training step that are never a parameter, submodule or buffer: set
# directly (``VAE.__setattr__``).
_PLAIN_ATTRIBUTES = frozenset({"_current_fx_name", "samples_seen", "group_left"})


TRAIN_SUMS = "train_bound_sums"  # the checkpoint's key of the epoch's training-bound sums
VALIDATION_SEED = 0  # of validation's own random stream (``VAE.on_validation_start``)


class VAE(Inference, L.LightningModule):
    """Auto-Encoding Variational Bayes (Algorithm 1) with any objective.

    ``encoder`` is q(z|x), ``decoder`` p(x|z), ``prior`` p(z); ``objective`` gives the loss of
    a minibatch and the bound to log (``*/elbo``, ``*/recon``, ``*/kl``: the true ELBO in nats
    per data point, summed over pixels and latent dimensions, averaged over the data);
    ``optimizer`` is called with the parameters (e.g. ``functools.partial(torch.optim.Adam,
    lr=1e-3)``). ``latent`` and ``data_shape`` are the sizes the parts were built with (the
    data fixes the shape). ``compile`` compiles the encoder and decoder networks in place.

    ``schedule`` (e.g. ``schedules.StagedDecay()``) scales the learning rate by epoch: the
    factor of epoch e multiplies the optimizer's lr (``torch.optim.lr_scheduler.LambdaLR``).
    ``cuda_graph`` takes each step's loss and gradients as one captured CUDA graph, without a
    host-device synchronisation (``graphs.GraphedStep``; eagerly off CUDA).
    ``steps_per_batch`` K > 1 takes K optimizer steps per training batch, one per minibatch of
    the list of K minibatches a batch then is (the data module's ``steps_per_batch``), with
    manual optimization: the same steps as K = 1, with Lightning's per-batch cost paid once.
    ``classes`` K: the model is conditional on a class label y in 0..K-1 served with each image
    (``conditional``: its parts that depend on y get each batch's labels, ``given``).

    Load a trained model with ``VAE.load_from_checkpoint(path)``.
    """

    @checked
    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        prior: Prior,
        objective: Objective,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = ADAM,
        latent: PositiveInt | None = None,
        data_shape: Sequence[PositiveInt] | None = None,
        compile: bool = False,
        steps_per_batch: PositiveInt = 1,
        schedule: Callable[[int], float] | None = None,
        cuda_graph: bool = False,
        classes: PositiveInt | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.prior = encoder, decoder, prior
        self.objective, self.optimizer, self.schedule = objective, optimizer, schedule
        self.latent = latent if latent is not None else prior.latent
        # z's size, as q draws it and p scores it (the decoder of a hierarchy reads z_1 alone).
        sizes = {name: getattr(part, "latent", None) for name, part in (("model.encoder",
                 encoder), ("model.prior", prior))}
        if wrong := {name: size for name, size in sizes.items()
                     if size is not None and size != self.latent}:
            parts = ", ".join(f"{name}.latent={size}" for name, size in wrong.items())
            raise ValueError(f"latent={self.latent}, but {parts}: z is one size for q(z|x) "
                             "and p(z); set model.latent (the parts take it, ${model.latent}).")
        # The decoder reads the first decoder.latent units of z: all of z, or with stochastic
        # layers z_1 (or more of the layers): more units than z has was a shape traceback at the
        # first step; fewer without layers, a decoder that ignored the last units of z, silently.
        layers = getattr(encoder.posterior, "layers", None) or getattr(prior, "layers", None)
        reads = getattr(decoder, "latent", self.latent)
        if reads > self.latent or (not layers and reads != self.latent):
            raise ValueError(
                f"latent={self.latent}, but model.decoder.latent={reads}: the decoder reads z, "
                f"of {self.latent} units" + (f" (or its first layers, z_1 of {layers[0]})"
                                             if layers else "") + "; leave "
                "model.decoder.latent to the model (${model.latent}, or the first layer's size).")
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        if type(prior).distribution is Prior.distribution:  # a prior of one's own
            raise ValueError(
                f"model.prior: {type(prior).__qualname__} does not define distribution(), the "
                "torch Distribution over z (event shape [latent]) that the objectives score and "
                "sample (log_prob and sample default to it)")
        prior.bind(encoder)  # a prior built from q (the VampPrior)
        encoder.posterior.bind(prior)  # a q built with p's networks (the Ladder VAE)
        refuse_unfit(encoder.posterior, prior, objective)
        # The parts handed each batch's labels (a conditional VAE) and the optimizer step.
        self._conditional = tuple(m for m in self.modules() if isinstance(m, Conditional))
        self._stepped = tuple(m for m in self.modules() if isinstance(m, Stepped))
        self.classes = classes
        if {part.classes for part in self._conditional} - {classes}:
            raise ValueError(f"classes={classes}, but parts of the model are conditional on "
                             f"{sorted({part.classes for part in self._conditional})} classes: "
                             "set model.classes to the number of classes the labels take")
        if cuda_graph and (self._conditional or self._stepped):
            raise ValueError("cuda_graph=true cannot be used with a conditional model or a part "
                             "that follows the optimizer step (an annealed temperature): the "
                             "captured graph would keep the labels or the step of its first step")
        with self.given(torch.zeros(1, dtype=torch.int64)):  # probes of one point, class 0
            objective.check(self)
        if compile and objective.double_backward:
            raise ValueError(f"compile=true cannot be used with the objective {objective!r}: its "
                             "loss differentiates through a gradient, which torch.compile'd "
                             "networks cannot (set model.compile=false)")
        if compile:  # in place: parameter names, and so checkpoints, stay the same
            self.encoder.net.compile()
            self.decoder.net.compile()
        self.cuda_graph = cuda_graph
        self._graph: GraphedStep | None = None
        # The objective's own updates (e.g. FactorVAE's discriminator), after each model step.
        self.auxiliary = tuple(objective.auxiliary())
        if steps_per_batch > 1 or cuda_graph or self.auxiliary:
            self.automatic_optimization = False
        # Manual steps: K minibatches a batch, the gradient accumulated over `accumulate` of
        # them (train.py sets it from trainer.accumulate_grad_batches).
        self.steps_per_batch, self.accumulate = steps_per_batch, 1
        # Per stage, one BoundMean updated once per batch and the terms logged from it (and the
        # ELBO in bits per dimension, when the data's shape is known).
        # Bits per dimension only where the likelihood is a probability of discrete pixel
        # values: for a density, -log2 p(x) / D is no code length (it shifts with the scale).
        dims = (math.prod(self.data_shape) if self.data_shape and decoder.likelihood.discrete
                else None)
        self.terms = (*TERMS, BITS) if dims else TERMS
        self.metrics = nn.ModuleDict()
        for stage in STAGES:
            mean = self.metrics[f"{stage}_bound"] = BoundMean(dims)
            for term in self.terms:
                self.metrics[f"{stage}_{term}"] = BoundTerm(mean, term)
        self.samples_seen = 0
        # The minibatches of the last training batch (data.steps_per_batch K > 1) left
        # untrained where max_steps or max_samples stopped the run part-way through it: a run
        # resumed from its checkpoint trains them first (``ShardedBatchSampler``'s ``left``).
        self.group_left = 0
        # Training's wall time in the runs before this one (resumed from a checkpoint); None
        # where the checkpoint did not record it (written before this was kept).
        self.seconds_before: float | None = 0.0
        self._fit_start, self._fit_end = time.perf_counter(), None
        self._unlogged: set[str] = set()  # stages whose metrics this epoch has not logged yet
        self._validation_stream = contextlib.ExitStack()

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning names the running hook in ``_current_fx_name`` around each hook it calls,
        # dozens of times a training step, and the step counts ``samples_seen``: nn.Module's
        # __setattr__ would check each value against the parameters, submodules and buffers.
        if name in _PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def method(self) -> str:
        """The training algorithm, as results and Fig. 2 name it (``aevb``, ``wake_sleep``)."""
        return self.objective.method

    # ----------------------------------------------------------------------------- training
    def bound(self, x: Tensor, y: Tensor | int | None = None, seed: int | None = None) -> Bound:
        """The ELBO terms of each data point of ``x`` (a batch ``[B, ...]`` or one point; given
        its labels ``y``, for a conditional model): the objective's evaluation bound, from its
        draws of z (from ``seed``, else the global stream: ``seeded``). ``x`` is checked as the
        other methods check theirs (``_inputs``: its shape, finite values in the model's
        range): a batch of another shape was an IndexError, and a point holding a NaN scored
        NaN, silently."""
        x = self._inputs(x)
        one = self._one(x)
        x = x[None] if one else x
        with self.seeded(seed, "bound"):
            bound = self.batch_bound(x, None if y is None else self.labels(y, len(x), "bound"))
        return Bound(*(term[0] for term in bound)) if one else bound

    def batch_bound(self, x: Tensor, y: Tensor | None = None) -> Bound:
        """``bound`` of a batch as the data module serves it (``to_inputs``), unchecked: the
        training loop's validation and test steps and the callbacks' evaluations."""
        with self.given(y):
            return self.objective.bound(self, x)

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        """One optimizer step on the ``(x, y)`` batch, taken by Lightning; or, with
        ``steps_per_batch`` K > 1, one step per ``(x, y)`` minibatch of the list ``batch``,
        taken here, so that Lightning's per-batch cost is paid once every K steps."""
        if self.automatic_optimization:
            with self.given(batch[1]):
                loss = self._step_loss(batch[0])
            if self._logger_writes_this_batch():
                self._log_loss(loss)
            return loss
        optimizer, *auxiliary = (self.optimizers() if self.auxiliary
                                 else [self.optimizers()])
        minibatches = [batch] if isinstance(batch[0], Tensor) else batch
        last = optimization.is_last_batch(self, batch_idx)
        # A run resumed after a stop part-way through a batch gets that batch's untrained
        # minibatches first (the sampler's ``left``); the first ``spill`` of them end the
        # previous epoch, where the stop fell in its last batch.
        carried, self.group_left = self.group_left, 0
        spill = max(carried - batch_idx * self.steps_per_batch, 0)
        for j, (x, y) in enumerate(minibatches):
            # A stop falls right after an optimizer step, so the carried minibatches begin an
            # accumulation window; the others are counted from their epoch's start.
            index = j if j < carried else batch_idx * self.steps_per_batch + j - carried
            ends = j == spill - 1 or (last and j == len(minibatches) - 1)  # its epoch
            window = optimization.accumulation(self, index, ends)
            with self.given(y):
                loss = self._manual_step(x, optimizer, auxiliary, *window)
            if j == spill - 1:
                optimization.step_epoch_schedules(self, self.current_epoch - 1)
            # Stop where Lightning would after a one-step batch: max_steps, trainer.max_samples.
            if self.trainer.should_stop or 0 <= self.trainer.max_steps <= self.global_step:
                self.group_left = len(minibatches) - j - 1  # saved: a resume trains them first
                break
        if self._logger_writes_this_batch():
            self._log_loss(loss)  # the batch's last step's loss
        if last and not self.group_left:  # else after the rest, in the run resumed
            optimization.step_epoch_schedules(self, self.current_epoch)
        return None

    def _manual_step(self, x: Tensor, optimizer: Any, auxiliary: Sequence[Any],
                     first: bool = True, step: bool = True) -> Tensor:
        """One step of the model's optimizer on ``x``, then the objective's own updates; or x's
        share (loss / ``accumulate``) of a window's gradient, zeroed ``first``, then ``step``."""
        if self.cuda_graph:
            loss = self._graphed_loss(x, optimizer)
        else:
            loss = self._step_loss(x)
            if first:
                optimizer.zero_grad()
            self.manual_backward(loss / self.accumulate if self.accumulate > 1 else loss)
        if not step:
            return loss
        optimizer.step()
        for update, aux_optimizer in zip(self.auxiliary, auxiliary):
            aux_optimizer.zero_grad()
            optimization.auxiliary_backward(self, update.loss(self, x), update.parameters())
            # The torch optimizer itself: Lightning's wrapper would count the update as an
            # optimizer step, and the model's step count (schedules, max_steps) is the model's.
            aux_optimizer.optimizer.step()
        return loss

    def _step_loss(self, x: Tensor) -> Tensor:
        """The loss of one optimizer step on the minibatch ``x``; counts its samples, adds its
        bound to the training averages, and stops the run if the loss is not finite."""
        for part in self._stepped:
            part.at_step(self.global_step)
        loss, bound = self.objective.loss(self, x)
        if self.trainer.strategy.reduce_boolean_decision(
            not torch.isfinite(loss).item(), all=False
        ):
            divergence.stop(self, bound)
        self.samples_seen += x.shape[0] * self.trainer.world_size
        self._update("train", bound)
        return loss

    def _graphed_loss(self, x: Tensor, optimizer) -> Tensor:
        """The loss of one step on ``x`` with its gradients, from the captured graph; counts its
        samples and adds its bound to the training averages, and reads the non-finite flag back
        only every ``log_every_n_steps`` steps (and at the epoch's end)."""
        if self._graph is None:
            problems = runtime_problems(self.trainer)
            if problems:
                raise ConfigError("model.cuda_graph=true cannot be used: " + "; ".join(problems)
                                  + ".")
            self._graph = GraphedStep(self, optimizer.optimizer)
        loss, bound = self._graph(x)
        self.samples_seen += x.shape[0] * self.trainer.world_size
        self._update("train", bound)
        every = max(1, self.trainer.log_every_n_steps)
        if (self.global_step + 1) % every == 0 and self._graph.non_finite():
            divergence.stop(self, bound, since=self.global_step + 1 - every)
        return loss

    def _log_loss(self, loss: Tensor) -> None:
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        for name, value in self.objective.logged().items():  # e.g. beta-TC's mi, tc, dwkl
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)

    def _logger_writes_this_batch(self) -> bool:
        """Whether Lightning hands this batch's metrics to the loggers (every
        ``log_every_n_steps`` batches, and when stopping; Lightning's own rule): ``train/loss``
        is logged on those batches only, so the other batches skip the cost of ``self.log`` and
        the progress bar's device read."""
        return self.trainer._logger_connector.should_update_logs

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        with self._float32():
            self._update("val", self.batch_bound(*batch))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        with self._float32():
            self._update("test", self.batch_bound(*batch))

    def _float32(self) -> contextlib.AbstractContextManager:
        """The reported bounds in float32 under mixed precision (``trainer.precision``
        bf16-mixed or 16-mixed: Lightning runs these steps under autocast, whose half-precision
        networks moved a test bound in its fourth digit): training alone is mixed, as vae-eval's
        evaluation is float32."""
        return torch.autocast(self.device.type, enabled=False)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per data point: the posterior's mean (its location where it has no mean), its
        standard deviation (where the family has one in closed form), and the ELBO (nats)."""
        x, y = batch
        # In float32 as validation and test are: under a mixed-precision Trainer (Lightning runs
        # predict under autocast) the half-precision networks moved a point's ELBO by 23 nats
        # (Frey Face's Gaussian) and a VQ-VAE's codes, against float32 with the same draws.
        with self._float32(), self.given(y):
            q = self.encoder(x)
            out = {"z_mean": self.encoder.location(q), "elbo": self.batch_bound(x).elbo}
            std = self.encoder.posterior.stddev(q)
        return out if std is None else {**out, "z_std": std}

    def on_train_epoch_start(self) -> None:
        self._unlogged.add("train")

    def on_validation_start(self) -> None:
        # Validation draws its z in a forked random stream seeded afresh, as the curve does: the
        # same draws at every validation (two epochs' val/elbo differ by the model, not by the
        # noise: the best checkpoint is picked on common random numbers), and training's stream
        # left as it was, so that a run that validates where an uninterrupted one does not (a
        # stop mid-epoch, then a continuation) trains on the same draws. Closed at the
        # validation epoch's end, before the checkpoint callbacks save that stream.
        cuda = [self.device] if self.device.type == "cuda" else []
        self._validation_stream.enter_context(torch.random.fork_rng(devices=cuda))
        torch.manual_seed(VALIDATION_SEED)

    def on_validation_epoch_start(self) -> None:
        self._unlogged.add("val")

    def on_validation_epoch_end(self) -> None:
        self._validation_stream.close()

    def on_test_epoch_start(self) -> None:
        self._unlogged.add("test")

    def on_train_epoch_end(self) -> None:
        if self._graph is not None and self._graph.non_finite():
            divergence.stop(self, self._graph.last_bound(), since=None)
        # float64 stays exact beyond 2^24; logged, it also reaches the parent of spawned ranks.
        seen = torch.tensor(self.samples_seen, dtype=torch.float64, device=self.device)
        self.log("train/samples_seen", seen, on_epoch=True, reduce_fx="max")

    def _update(self, stage: str, bound: Bound) -> None:
        """Update the ``stage`` averages with ``bound``. Lightning computes a logged metric
        object at the end of the epoch and keeps it until then, so ``self.log`` (a costly call)
        gets the ``stage/*`` metrics at the epoch's first update only."""
        self.metrics[f"{stage}_bound"].update(bound)
        if stage in self._unlogged:
            self._unlogged.discard(stage)
            for term in self.terms:
                self.log(f"{stage}/{term}", self.metrics[f"{stage}_{term}"], on_step=False,
                         on_epoch=True, prog_bar=term == "elbo")

    def setup(self, stage: str) -> None:
        """Bits per dimension are logged only where they are a code length
        (``likelihoods.code_length``): not for a Bernoulli likelihood on data that are not
        binarized (Frey Face's grey levels: a warning says its bound is no log probability)."""
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if BITS in self.terms and datamodule is not None \
                and not code_length(self.decoder.likelihood, datamodule):
            self.terms = TERMS

    def configure_optimizers(self) -> Any:
        return optimization.configure(self)

    def on_fit_start(self) -> None:
        self._fit_start, self._fit_end = time.perf_counter(), None

    def on_fit_end(self) -> None:
        self._fit_end = time.perf_counter()

    def fit_seconds(self) -> float:
        """This run's training wall time, from the start of fitting to its end (or now):
        results.json's ``seconds``. The one clock that ``train_seconds`` and the checkpoints'
        records also read."""
        end = self._fit_end if self._fit_end is not None else time.perf_counter()
        return end - self._fit_start

    def train_seconds(self) -> float | None:
        """Training's wall time over this run and those it resumes: what a run resumed across
        machines took in all (results.json's ``seconds_total``); None where a checkpoint it
        resumed from did not record it."""
        if self.seconds_before is None:
            return None
        return self.seconds_before + self.fit_seconds()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["samples_seen"] = self.samples_seen
        if self.group_left:
            checkpoint[resume.GROUP_LEFT] = self.group_left
        if (seconds := self.train_seconds()) is not None:
            checkpoint["train_seconds"] = seconds
        # This rank's sums of the epoch's training bound so far: a run continued from a
        # checkpoint taken part-way through an epoch averages train/elbo over the whole epoch.
        train = self.metrics["train_bound"]
        checkpoint[TRAIN_SUMS] = torch.cat([train.total, train.count[None]]).detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.samples_seen = checkpoint.get("samples_seen", 0)
        left = checkpoint.get(resume.GROUP_LEFT, 0)
        # (A model rebuilt for evaluation does not read the count; whether the epoch's order
        # has that many before the resumed point, the training sampler checks.)
        if type(left) is not int or left < 0:
            raise CheckpointError(f"The checkpoint's {resume.GROUP_LEFT} is {left!r}, not a "
                                  "whole number of minibatches >= 0: the file was altered; "
                                  "resume from another checkpoint.")
        self.group_left = left
        saved = checkpoint.get("train_seconds")
        if saved is None:  # unrecorded, or a checkpoint taken before any step
            self.seconds_before = 0.0 if not checkpoint.get("global_step") else None
        elif isinstance(saved, float) and math.isfinite(saved) and saved >= 0:
            self.seconds_before = saved
        else:
            raise CheckpointError(f"The checkpoint's train_seconds is {saved!r}, not a number of "
                                  "seconds >= 0, which vae-train does not write (the file was "
                                  "altered). Resume from another checkpoint.")
        optimization.apply_settings(self, checkpoint)
        resume.close_finished_epoch(checkpoint, self._trainer is not None
                                    and self.trainer.max_steps != -1)
        if resume.reopen_stopped_epoch(checkpoint):  # no on_train_epoch_start for its rest
            self._unlogged.add("train")
            sums = checkpoint.get(TRAIN_SUMS)
            # Rank 0's sums (the one a checkpoint keeps) restore one process's epoch exactly;
            # under DDP train/elbo then averages the rest of the epoch only.
            single = self._trainer is None or self.trainer.world_size == 1
            if single and isinstance(sums, torch.Tensor) and sums.shape == (3,) \
                    and bool(torch.isfinite(sums).all()):
                train = self.metrics["train_bound"]
                train.total.copy_(sums[:2])
                train.count.copy_(sums[2])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, map_location: Any = "cpu",
                             trusted: Sequence[str] = (), **_: Any) -> VAE:
        """The trained model of a checkpoint written by ``vae-train``, in eval mode.

        The model is rebuilt from the run config saved in the checkpoint (read with
        ``weights_only=True``); a checkpoint is untrusted, so only the classes this package's
        config groups name (and ``trusted``, the dotted names of your own parts) are built."""
        # Where the model goes, checked first: a device this machine lacks was torch's error.
        device = device_of("VAE.load_from_checkpoint", str(map_location), "map_location")
        return load_model(checkpoint_path, cls, device, trusted)[0]
