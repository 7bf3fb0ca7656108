"""The VAE LightningModule: composes q(z|x), p(x|z), p(z) and the objective, and logs the bound."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from vae_lightning.likelihoods import Bernoulli, Decoder, Likelihood
from vae_lightning.metrics import TERMS, BoundMean, BoundTerm
from vae_lightning.objectives import Bound, draw, elbo, iwae
from vae_lightning.posteriors import GaussianPosterior, Posterior
from vae_lightning.priors import Prior, StandardNormal

STAGES = ("train", "val", "test")


class VAE(L.LightningModule):
    """Auto-Encoding Variational Bayes (Algorithm 1) with the ELBO or the importance-weighted bound.

    Training minimises ``-(recon - beta_t * KL)`` averaged over the minibatch (eq. 8), where
    ``beta_t`` ramps linearly from 0 to ``beta`` over ``kl_warmup_steps``; with
    ``objective='iwae'`` it minimises the negative importance-weighted bound with ``k`` samples.
    Whatever the training objective, the logged ``*/elbo`` is the true (beta = 1) bound in nats per
    data point, summed over pixels and latent dimensions and averaged over the data.

    ``posterior`` and ``prior`` are factories called with the sizes the data fix; ``optimizer`` is a
    factory called with the parameters (e.g. ``functools.partial(torch.optim.Adam, lr=1e-3)``).
    ``compile`` compiles the encoder and decoder MLPs with ``torch.compile``.
    ``steps_per_batch`` K > 1 takes K optimizer steps per training batch, one per minibatch of
    the list of K minibatches the batch then is (``VAEDataModule(steps_per_batch=K)``), with
    manual optimization: the same steps as K = 1 with Lightning's per-batch cost paid once.
    ``config`` is the run's full configuration, stored in the checkpoint so it can be rebuilt.
    """

    method = "aevb"  # the training algorithm, as results and Fig. 2 name it

    def __init__(
        self,
        input_dim: int,
        latent: int = 20,
        encoder_hidden: Sequence[int] = (400,),
        decoder_hidden: Sequence[int] = (400,),
        activation: str = "relu",
        init_std: float | None = None,
        posterior: Callable[..., Posterior] = GaussianPosterior,
        likelihood: Likelihood | None = None,
        prior: Callable[..., Prior] = StandardNormal,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        n_samples: int = 1,
        kl: str = "analytic",
        objective: str = "elbo",
        k: int = 1,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        compile: bool = False,
        steps_per_batch: int = 1,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["posterior", "likelihood", "prior", "optimizer"])
        self.encoder = posterior(input_dim, latent, encoder_hidden, activation, init_std)
        self.decoder = Decoder(
            latent, input_dim, likelihood or Bernoulli(), decoder_hidden, activation, init_std
        )
        self.prior = _call_with_accepted(
            prior, latent=latent, input_dim=input_dim, encoder=self.encoder
        )
        if kl == "analytic" and not (self.encoder.has_analytic_kl and self.prior.has_analytic_kl):
            raise ValueError(
                f"model.kl='analytic' needs a closed-form KL between the posterior and the prior, "
                f"and {type(self.encoder).__name__} / {type(self.prior).__name__} have none; "
                "use model.kl=mc."
            )
        if compile:  # in place: parameter names, and so checkpoints, stay the same
            self.encoder.net.compile()
            self.decoder.net.compile()
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        if not (isinstance(steps_per_batch, int) and steps_per_batch >= 1):
            raise ValueError(f"steps_per_batch={steps_per_batch!r} is invalid: expected a "
                             "positive number of optimizer steps per training batch.")
        if steps_per_batch > 1:
            self.automatic_optimization = False
        # Per stage, one BoundMean updated once per batch and the three terms logged from it.
        self.metrics = nn.ModuleDict()
        for stage in STAGES:
            mean = self.metrics[f"{stage}_bound"] = BoundMean()
            for term in TERMS:
                self.metrics[f"{stage}_{term}"] = BoundTerm(mean, term)
        self.samples_seen = 0
        self._unlogged: set[str] = set()  # stages whose metrics this epoch has not logged yet

    def bound(self, x: Tensor) -> Bound:
        """The ELBO terms of each row of ``x`` with the configured estimator and L."""
        q = self.encoder(x)
        return elbo(
            x, q, self.decoder, self.prior, self.hparams.n_samples, self.hparams.kl == "analytic"
        )

    def kl_weight(self) -> float:
        """beta_t: the KL weight at the current step (linear warm-up, then ``beta``)."""
        warmup = self.hparams.kl_warmup_steps
        ramp = min(1.0, self.global_step / warmup) if warmup > 0 else 1.0
        return self.hparams.beta * ramp

    def training_loss(self, x: Tensor) -> tuple[Tensor, Bound]:
        """The minibatch loss to minimise (eq. 8), and the ELBO terms to log."""
        if self.hparams.objective == "iwae":
            samples = draw(x, self.encoder(x), self.decoder, self.prior, self.hparams.k)
            return -iwae(samples.log_w).mean(), samples.bound()
        bound = self.bound(x)
        return -(bound.recon - self.kl_weight() * bound.kl).mean(), bound

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        """One optimizer step on the ``(x, y)`` batch, taken by Lightning; or, with
        ``steps_per_batch`` K > 1, one step per ``(x, y)`` minibatch of the list ``batch``,
        taken here, so that Lightning's per-batch cost is paid once every K steps."""
        if self.automatic_optimization:
            loss = self._step_loss(batch[0])
            if self._logger_writes_this_step():
                self._log_loss(loss)
            return loss
        optimizer = self.optimizers()
        for x, _ in batch:
            loss = self._step_loss(x)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            # Stop where Lightning would after a one-step batch: max_steps, trainer.max_samples.
            if self.trainer.should_stop or 0 <= self.trainer.max_steps <= self.global_step:
                break
        self._log_loss(loss)  # once per batch: Lightning writes it every log_every_n_steps batches
        return None

    def _step_loss(self, x: Tensor) -> Tensor:
        """The loss of one optimizer step on the minibatch ``x``; counts its samples, adds its
        bound to the training averages, and stops the run if the loss is not finite."""
        loss, bound = self.training_loss(x)
        if self.trainer.strategy.reduce_boolean_decision(
            not torch.isfinite(loss).item(), all=False
        ):
            self._stop_on_non_finite(bound)
        self.samples_seen += x.shape[0] * self.trainer.world_size
        self._update("train", bound)
        return loss

    def _log_loss(self, loss: Tensor) -> None:
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)

    def _logger_writes_this_step(self) -> bool:
        """Whether Lightning hands this step's metrics to the loggers (every
        ``log_every_n_steps``, and when stopping): ``train/loss`` is logged on those steps only,
        so the other steps skip the cost of ``self.log`` and the progress bar's device read."""
        every = self.trainer.log_every_n_steps
        return self.trainer.should_stop or (every > 0 and (self.global_step + 1) % every == 0)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._update("val", self.bound(batch[0]))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._update("test", self.bound(batch[0]))

    def on_train_epoch_start(self) -> None:
        self._unlogged.add("train")

    def on_validation_epoch_start(self) -> None:
        self._unlogged.add("val")

    def on_test_epoch_start(self) -> None:
        self._unlogged.add("test")

    def on_train_epoch_end(self) -> None:
        # float64 stays exact beyond 2^24; logged, it also reaches the parent of spawned ranks.
        seen = torch.tensor(self.samples_seen, dtype=torch.float64, device=self.device)
        self.log("train/samples_seen", seen, on_epoch=True, reduce_fx="max")

    def _update(self, stage: str, bound: Bound) -> None:
        """Update the ``stage`` averages with ``bound``. Lightning computes a logged metric
        object at the end of the epoch and keeps it until then, so ``self.log`` (tenths of a
        millisecond a call) gets the ``stage/*`` metrics at the epoch's first update only."""
        self.metrics[f"{stage}_bound"].update(bound)
        if stage in self._unlogged:
            self._unlogged.discard(stage)
            for term in TERMS:
                self.log(
                    f"{stage}/{term}",
                    self.metrics[f"{stage}_{term}"],
                    on_step=False,
                    on_epoch=True,
                    prog_bar=term == "elbo",
                )

    def _stop_on_non_finite(self, bound: Bound) -> None:
        """Save the last good state (this step's update is not applied) and stop the run."""
        terms = {"reconstruction term E_q[log p(x|z)]": bound.recon, "KL term": bound.kl}
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
        where = self.trainer.checkpoint_callback
        directory = Path(where.dirpath if where else self.trainer.default_root_dir)
        path = directory / f"nonfinite-step{self.global_step}.ckpt"
        self.trainer.save_checkpoint(path)
        raise NonFiniteLossError(
            f"The loss became non-finite at step {self.global_step} (epoch {self.current_epoch}) "
            f"in the {' and the '.join(bad) or 'loss'}. The state before this step is saved "
            f"to {path}. Try a lower optimizer.lr or a larger likelihood.min_var."
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.samples_seen = checkpoint.get("samples_seen", 0)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def _call_with_accepted(factory: Callable[..., Prior], **available: Any) -> Prior:
    """Call ``factory`` with those of ``available`` that its signature names (a VampPrior needs
    the encoder and input size, a standard normal only the latent size)."""
    accepted = inspect.signature(factory).parameters
    return factory(**{name: value for name, value in available.items() if name in accepted})
