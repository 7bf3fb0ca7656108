"""Relaxed categorical latents: the Gumbel-softmax / Concrete distribution (Jang et al. 2017,
"Categorical reparameterization with Gumbel-softmax"; Maddison et al. 2017, "The Concrete
distribution"), alone or joint with Gaussian latents (Dupont 2018, "Learning disentangled joint
continuous and discrete representations", JointVAE).

Layout of z [..., latent]: ``continuous`` Gaussian dimensions first, then (latent - continuous)
/ K one-hot blocks of ``categories`` K. The network emits 2 x continuous Gaussian parameters
(the ``Gaussian`` family's) and K logits per block.

- Training (``self.training``): each block is Concrete(pi, tau), z = softmax((log pi + g) / tau)
  with g ~ Gumbel(0, 1), differentiable in pi (``rsample``); density (Maddison et al. eq. 1 /
  Jang et al. eq. 3): p(z) = (K-1)! tau^(K-1) prod_k (pi_k z_k^(-tau-1)) / (sum_i pi_i z_i^-tau)^K.
  Drawn in log space, y = log z = log_softmax((log pi + g) / tau) (the ExpConcrete), and scored
  there, log p(z) = log p_ExpConcrete(y) - sum_k y_k, as Maddison et al. (Sec. 3.3 and C)
  advise: a z_k below float32's range (a confident block at a low temperature, y_k < -103) is
  exactly 0, where log z_k is -inf and both log q(z) and log p(z) would be NaN. The log values
  of a family's draws are kept (``Draws``) with the z each returned, so that q and the prior,
  both built by the family, score that z from them; any other z is scored from itself.
- Evaluation (``module.eval()``): each block is the discrete OneHotCategorical(pi), so log q and
  log p are exact probabilities of one-hot codes and the importance-weighted estimate is a valid
  bound on log p(x) of the model whose decoder reads one-hot codes (the relaxation is a training
  device only).

Temperature annealing (Jang et al. Sec. 3.1): tau = max(tau_min, tau0 exp(-r t)), t the model's
optimizer step (from 0), which the model hands the family before each training step
(``parts.Stepped``): the same clock as the KL schedules, however many times an objective encodes
a batch; kept in a buffer too, so that the temperature is the schedule's outside training.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor, nn
from torch import distributions as D
from torch.distributions import Distribution

from vae_lightning.args import NonNegativeFloat, NonNegativeInt, Range, checked
from vae_lightning.posteriors import Family, Gaussian

# tau becomes a float32 tensor (``categorical_blocks``): beyond float32's range it overflowed to a
# RuntimeError traceback at the first step, or underflowed to 0 (a Concrete of 0/0).
Temperature = Annotated[float, Range(ge=1e-30, le=1e30)]


class Draws:
    """The log values y = log z of the relaxed blocks of a family's draws, kept with the z each
    draw returned (that very tensor: a copy, a view or another z is not it), so that log q(z) and
    log p(z) are computed from y, finite where z_k underflowed to 0. They are held by z itself,
    so they, and the encoder's graph behind them, are freed with z (not kept until the next
    draw); ``keep`` marks them with this object, so another family's z is scored from itself."""

    def keep(self, z: Tensor, logs: list[Tensor | None]) -> None:
        z.__dict__[_LOGS] = (self, logs)

    def logs(self, z: Tensor) -> list[Tensor | None] | None:
        """The parts' log values (None for a part not relaxed) if ``z`` is one of its draws."""
        owner, logs = z.__dict__.get(_LOGS, (None, None))
        return logs if owner is self else None


_LOGS = "_relaxed_categorical_logs"  # the attribute of a drawn z that holds its log values


class JointLatent(Distribution):
    """Independent parts over consecutive slices of z: ``parts`` a list of distributions, each
    with event shape [width]; ``logits`` [..., blocks, K] of the categorical parts (for the
    analytic KL, ``priors.categorical``); ``draws``, the family's ``Draws`` (shared by its
    posterior and its prior)."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, parts: list[Distribution], logits: Tensor | None,
                 draws: Draws | None = None) -> None:
        self.parts, self.logits, self.draws = parts, logits, draws
        self.widths = [p.event_shape[-1] for p in parts]
        super().__init__(parts[0].batch_shape, torch.Size([sum(self.widths)]),
                         validate_args=False)

    def _draw(self, shape: torch.Size | tuple[int, ...], grad: bool) -> Tensor:
        values, logs = [], []
        for p in self.parts:
            if isinstance(p, Flat) and p.relaxed:
                y = p.rsample_log(shape)
                values.append(y.exp().flatten(-2))  # as torch's draw: exp of the ExpConcrete
                logs.append(y)
            else:
                values.append(p.rsample(shape) if grad and p.has_rsample else p.sample(shape))
                logs.append(None)
        z = torch.cat(values, -1)
        if self.draws is not None and any(y is not None for y in logs):
            self.draws.keep(z, logs)
        return z

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Reparameterized where the parts are (training); exact discrete draws in evaluation."""
        return self._draw(sample_shape, grad=True)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self._draw(sample_shape, grad=False)

    def log_prob(self, z: Tensor) -> Tensor:
        logs = self.draws.logs(z) if self.draws is not None else None
        if logs is None:
            return sum(p.log_prob(s) for p, s in zip(self.parts, z.split(self.widths, -1)))
        return sum(p.log_prob(s) if y is None else p.log_prob_log(y)
                   for p, s, y in zip(self.parts, z.split(self.widths, -1), logs))

    @property
    def mean(self) -> Tensor:
        """The Gaussian means and the categorical probabilities (a relaxed block's mean has no
        closed form; its probabilities are its location as tau -> 0)."""
        out = [p.base_dist.mean if isinstance(p, D.Independent) and isinstance(
            p.base_dist, D.Normal) else p.base_dist.probs.flatten(-2) for p in self.parts]
        return torch.cat(out, -1)


def categorical_blocks(logits: Tensor, temperature: float | None) -> Distribution:
    """Blocks [..., B, K] of logits as one distribution over z [..., B * K]: Concrete at
    ``temperature``, or the discrete one-hot categorical where it is None. An empty batch (no
    logits) gets one point's blocks expanded to it: torch cannot normalise zero logits (its
    reshape to -1 is ambiguous)."""
    batch = logits.shape[:-1]
    if logits.numel() == 0:
        logits = logits.new_zeros((1,) * (logits.dim() - 2) + logits.shape[-2:])
    if temperature is None:
        block = D.OneHotCategorical(logits=logits, validate_args=False)
    else:
        block = D.RelaxedOneHotCategorical(logits.new_full((), temperature),
                                           logits=logits, validate_args=False)
    return Flat(block.expand(batch) if block.batch_shape != batch else block)


class Flat(D.Independent):
    """Independent(block, 1) with the blocks' one-hot vectors read as one flat vector."""

    def __init__(self, block: Distribution) -> None:
        super().__init__(block, 1, validate_args=False)
        self.width = block.batch_shape[-1] * block.event_shape[-1]
        self._event_shape = torch.Size([self.width])
        self.relaxed = isinstance(block, D.RelaxedOneHotCategorical)

    def rsample_log(self, sample_shape=()) -> Tensor:
        """A relaxed draw in log space, y = log z ``[..., blocks, K]`` (the ExpConcrete under
        torch's Concrete: its z is exp(y), drawn from the same random numbers)."""
        return self.base_dist.base_dist.rsample(sample_shape)

    def log_prob_log(self, y: Tensor) -> Tensor:
        """log p(z) of the relaxed z = exp(y) from y: the ExpConcrete's log-density minus the
        log-Jacobian of exp, sum_k y_k (finite where z_k is 0 in float32), summed over blocks."""
        return (self.base_dist.base_dist.log_prob(y) - y.sum(-1)).sum(-1)

    def rsample(self, sample_shape=()) -> Tensor:
        return self.base_dist.rsample(sample_shape).flatten(-2)

    def sample(self, sample_shape=()) -> Tensor:
        return self.base_dist.sample(sample_shape).flatten(-2)

    def log_prob(self, z: Tensor) -> Tensor:
        blocks = z.unflatten(-1, self.base_dist.batch_shape[-1:] + self.base_dist.event_shape)
        return self.base_dist.log_prob(blocks).sum(-1)


class RelaxedCategorical(Family, nn.Module):
    """q(z|x): ``continuous`` Gaussian dimensions (the ``Gaussian`` family) and one-hot blocks of
    ``categories`` K, relaxed at temperature tau in training (see the module's docstring)."""

    features = frozenset({"rsample", "density", "finite_variance"})

    @checked
    def __init__(self, categories: Annotated[int, Range(ge=2)] = 10, continuous: NonNegativeInt = 0,
                 temperature: Temperature = 1.0, temperature_min: Temperature = 0.5,
                 # >= 0: tau is annealed down; a negative rate raised tau without bound, until
                 # exp(-r t) overflowed (an OverflowError traceback at step 710 with r = -1).
                 anneal_rate: NonNegativeFloat = 3e-5) -> None:
        nn.Module.__init__(self)
        self.categories, self.continuous = categories, continuous
        self.temperature, self.temperature_min = temperature, temperature_min
        self.anneal_rate = anneal_rate
        self.gaussian = Gaussian()
        self.draws = Draws()  # the last relaxed draw's log values (the module's docstring)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def at_step(self, step: int) -> None:
        """The model's optimizer step t, before each training step (``parts.Stepped``)."""
        self.step.fill_(step)

    def tau(self) -> float:
        """tau = max(tau_min, tau0 exp(-r t)) (Jang et al. Sec. 3.1)."""
        return max(self.temperature_min,
                   self.temperature * math.exp(-self.anneal_rate * int(self.step)))

    def blocks(self, latent: int) -> int:
        discrete = latent - self.continuous
        if discrete <= 0 or discrete % self.categories:
            raise ValueError(f"model.latent={latent} minus model.encoder.posterior.continuous="
                             f"{self.continuous} must be a positive multiple of categories="
                             f"{self.categories} (the one-hot blocks)")
        return discrete // self.categories

    def n_params(self, latent: int) -> int:
        self.blocks(latent)
        return 2 * self.continuous + latent - self.continuous

    def __call__(self, params: Tensor) -> Distribution:
        gaussian, logits = params.split([2 * self.continuous,
                                         params.shape[-1] - 2 * self.continuous], -1)
        logits = logits.unflatten(-1, (-1, self.categories))
        parts = [self.gaussian(gaussian)] if self.continuous else []
        parts.append(categorical_blocks(logits, self.tau() if self.training else None))
        return JointLatent(parts, logits, self.draws)

    def bind(self, prior: nn.Module) -> None:
        if "one_hot_blocks" not in prior.features:  # parts.FEATURES
            raise ValueError(f"the posterior RelaxedCategorical needs the prior to have one-hot "
                             f"blocks (model/prior=uniform_categorical), which the prior "
                             f"{type(prior).__name__} does not have; use model=gumbel")

    def stddev(self, q: Distribution) -> Tensor | None:
        return None
