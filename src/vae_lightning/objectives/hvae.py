"""The Hamiltonian VAE (Caterini, Doucet & Sejdinovic 2018): z_0 ~ q(z|x) is moved by K leapfrog
steps of Hamiltonian dynamics under the potential U(z) = -log p(x, z), the momentum tempered
between steps, and the bound is that of the resulting proposal over (z_K, rho_K).

With gamma ~ N(0, I) and rho_0 = gamma / sqrt(beta_0), each step k = 1..K is

    rho' = rho - (eps/2) grad U(z),   z <- z + eps rho',   rho'' = rho' - (eps/2) grad U(z),
    rho <- sqrt(beta_(k-1) / beta_k) rho'',

with the quadratic schedule 1/sqrt(beta_k) = (1 - 1/sqrt(beta_0)) (k/K)^2 + 1/sqrt(beta_0), so
that beta_K = 1 (``tempering: quadratic``, the paper's "fixed" tempering); or, ``tempering:
free``, each step's factor alpha_k = sqrt(beta_(k-1) / beta_k) in (0, 1) a parameter of its own
and sqrt(beta_0) = alpha_1 ... alpha_K (the paper's "free" tempering). The leapfrog steps
preserve volume and the tempering scales rho by sqrt(beta_0) in all, which cancels the
1/sqrt(beta_0) of rho_0: the map (z_0, gamma) -> (z_K, rho_K) has unit Jacobian, and with the
target p(x, z) N(rho; 0, I), whose integral over (z, rho) is p(x),

    log p(x) >= E[log p(x, z_K) + log N(rho_K; 0, I) - log q(z_0|x) - log N(gamma; 0, I)]

(the paper's bound with its Jacobian written out; normalising constants included). Each term
is the log of an unbiased estimate of p(x), so the same log-weights give the importance-weighted
estimate of log p(x) (``log_weights``: what ``vae-eval`` uses with this objective).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn import functional as F

from vae_lightning.args import PositiveFloat, PositiveInt, Range, checked
from vae_lightning.parts import Parts, confined_space, scored_draws, scored_sample

from .base import Bound, Objective

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _log_standard_normal(v: Tensor) -> Tensor:
    """log N(v; 0, I) over the last dimension."""
    return -0.5 * v.pow(2).sum(-1) - v.shape[-1] * _HALF_LOG_2PI


class HVAE(Objective, nn.Module):
    """K leapfrog steps of size ``step_size`` with tempering from ``beta0`` (in (0, 1]; 1: no
    tempering); ``tempering``: ``quadratic`` (beta_k on the paper's schedule from beta_0) or
    ``free`` (one factor alpha_k per step, each starting at beta0^(1/(2K)), so that their product
    starts at sqrt(beta_0)); ``learn``: the step sizes and the tempering (beta_0, or the
    alpha_k) trained with the model (by its optimizer), as the paper's learned variants;
    ``per_dimension``: one step size per latent dimension (of ``latent``), the paper's eps in
    R^d (false: one for all, as pythae); ``vary_step``: step sizes of their own for each of the
    K steps (the authors' ``vary_eps``); ``max_step``: the step sizes kept in (0, max_step) by a
    sigmoid, as the authors' code (None: exp of a parameter).

    The training bound logged is the HVAE bound: ``recon`` is log p(x|z_K) and ``kl`` the rest,
    log q(z_0|x) + log N(gamma) - log p(z_K) - log N(rho_K); the evaluation bound (validation,
    Fig. 2) is the ELBO of q(z|x) alone."""

    checkpoint = "last"  # the final model: the HVAE bound, not q's ELBO, is trained
    double_backward = True  # the leapfrog steps follow grad_z log p(x, z) (create_graph)
    proposal = ("z_0 ~ q(z|x) moved by the K leapfrog steps: elbo is the HVAE bound, not q's "
                "ELBO (results.json's test/elbo)")

    @checked
    def __init__(self, steps: PositiveInt = 3, step_size: PositiveFloat = 1e-3,
                 beta0: Annotated[float, Range(gt=0, le=1)] = 0.3,
                 tempering: Literal["quadratic", "free"] = "quadratic", learn: bool = False,
                 per_dimension: bool = False, vary_step: bool = False,
                 latent: PositiveInt | None = None,
                 max_step: PositiveFloat | None = None) -> None:
        nn.Module.__init__(self)
        if max_step is not None and step_size >= max_step:
            raise ValueError(f"step_size={step_size} must be below max_step={max_step}")
        if per_dimension and latent is None:
            raise ValueError("per_dimension=true needs latent (the model's: ${..latent})")
        self.steps, self.max_step, self.tempering = steps, max_step, tempering
        self.per_dimension, self.vary_step = per_dimension, vary_step
        raw = (math.log(step_size) if max_step is None
               else math.log(step_size / (max_step - step_size)))
        shape = (steps,) * vary_step + (latent,) * per_dimension
        self.step_param = nn.Parameter(torch.full(shape, raw), requires_grad=learn)
        # beta_0, or each alpha_k, = sigmoid(logit) in (0, 1); beta0 = 1 (no tempering) is kept
        # exactly, its parameter unused.
        self.untempered = beta0 == 1
        factor = beta0 ** (0.5 / steps) if tempering == "free" else beta0
        logit = 0.0 if self.untempered else math.log(factor / (1 - factor))
        self.beta0_logit = nn.Parameter(
            torch.full((steps,) if tempering == "free" else (), logit),
            requires_grad=learn and not self.untempered)

    def extra_repr(self) -> str:
        step = self.step_size().detach()
        shown = f"{step.item():.4g}" if step.dim() == 0 else f"[{step.numel()} sizes]"
        return (f"steps={self.steps}, step_size={shown}, beta0={self.beta0().item():.4g}, "
                f"tempering={self.tempering}, learn={self.step_param.requires_grad}")

    __repr__ = nn.Module.__repr__

    def check(self, model: Parts) -> None:
        if reason := confined_space(model.prior):
            raise ValueError(f"the HVAE moves z through all of R^latent by leapfrog steps, and "
                             f"the prior lives on {reason}: choose a prior with a density on "
                             "R^latent (model/prior=normal, mog, vamp, flow)")
        if self.per_dimension and self.step_param.shape[-1] != model.latent:
            raise ValueError(f"latent={self.step_param.shape[-1]} step sizes for a model of "
                             f"latent={model.latent} (model.objective.latent: ${{..latent}})")

    def step_size(self) -> Tensor:
        """eps: exp of the parameter, or max_step * sigmoid of it."""
        if self.max_step is None:
            return self.step_param.exp()
        return self.max_step * torch.sigmoid(self.step_param)

    def beta0(self) -> Tensor:
        """beta_0: the quadratic schedule's start, or (free) the product of the alpha_k^2."""
        if self.untempered:
            return torch.ones(())
        if self.tempering == "free":
            return torch.sigmoid(self.beta0_logit).prod().square()
        return torch.sigmoid(self.beta0_logit)

    def _tempering(self) -> tuple[Tensor, list[Tensor]]:
        """1/sqrt(beta_0), rho_0's scale, and the factors alpha_k = sqrt(beta_(k-1) / beta_k)
        of the K steps, whose product is sqrt(beta_0) (so that beta_K = 1)."""
        if self.untempered:
            one = torch.ones((), device=self.step_param.device)
            return one, [one] * self.steps
        if self.tempering == "free":
            log_alpha = F.logsigmoid(self.beta0_logit)
            return (-log_alpha.sum()).exp(), list(log_alpha.exp())
        # The quadratic schedule of 1/sqrt(beta_k), k = 0..K (1/sqrt(beta_K) = 1).
        start = torch.sigmoid(self.beta0_logit).rsqrt()
        inv_sqrt = [(1 - start) * (k / self.steps) ** 2 + start for k in range(self.steps + 1)]
        return start, [inv_sqrt[k] / inv_sqrt[k - 1] for k in range(1, self.steps + 1)]

    def flow(self, model: Parts, x: Tensor, z: Tensor, gamma: Tensor, create_graph: bool,
             p: Distribution | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The K tempered leapfrog steps from (z_0, rho_0 = gamma sqrt(1/beta_0)) under the
        prior ``p`` (default: the model's, built once: a VampPrior encodes its pseudo-inputs):
        z_K, rho_K, log p(x|z_K) and log p(z_K). ``create_graph``: the result differentiable in
        z_0, gamma and the parameters (training); otherwise each step's z is a new leaf
        (evaluation)."""
        p = model.prior.distribution() if p is None else p
        eps = self.step_size()
        steps = list(eps) if self.vary_step else [eps] * self.steps
        start, alphas = self._tempering()
        rho = gamma * start
        log_px_z, log_pz, grad_u = self._potential(model, p, x, z, create_graph)
        for eps_k, alpha_k in zip(steps, alphas):
            rho = rho - 0.5 * eps_k * grad_u
            z = z + eps_k * rho
            log_px_z, log_pz, grad_u = self._potential(model, p, x, z, create_graph)
            rho = (rho - 0.5 * eps_k * grad_u) * alpha_k
        return z, rho, log_px_z, log_pz

    @staticmethod
    def _potential(model: Parts, p: Distribution, x: Tensor, z: Tensor,
                   create_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x|z), log p(z) and grad_z U = -grad_z log p(x, z), one decoder pass."""
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):
                z = z.detach().requires_grad_(True)
            log_px_z, log_pz = model.decoder(z).log_prob(x), p.log_prob(z)
            (grad_log_p,) = torch.autograd.grad((log_px_z + log_pz).sum(), z,
                                                create_graph=create_graph)
        if not create_graph:
            log_px_z, log_pz = log_px_z.detach(), log_pz.detach()
        return log_px_z, log_pz, -grad_log_p

    def _terms(self, model: Parts, x: Tensor, z0: Tensor, log_qz0: Tensor,
               create_graph: bool, p: Distribution | None = None,
               gamma: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """log p(x|z_K) and the HVAE log-weight of the draws z_0 (any leading sample shape)
        with the momenta ``gamma`` (None: drawn now, one per z_0)."""
        gamma = torch.randn_like(z0) if gamma is None else gamma
        _, rho, log_px_z, log_pz = self.flow(model, x, z0, gamma, create_graph, p)
        log_w = (log_px_z + log_pz + _log_standard_normal(rho)
                 - log_qz0 - _log_standard_normal(gamma))
        return log_px_z, log_w

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        q = model.encoder(x)
        z0, log_qz0 = scored_sample(q)
        log_px_z, log_w = self._terms(model, x, z0, log_qz0, torch.is_grad_enabled())
        return -log_w.mean(), Bound(log_px_z, log_px_z - log_w)

    def log_weights(self, model: Parts, x: Tensor, q: Distribution, p: Distribution,
                    n: int) -> Tensor:
        """The HVAE log-weights of n draws z_0 ~ q(z|x) ``[n, batch]``, the proposal of the
        trained model (``Objective.log_weights``)."""
        # Each sample's z_0 and then its momentum, in turn: the n draws are the same whatever
        # the chunks the k of an evaluation are scored in (``importance_weighted``).
        draws = []
        for _ in range(n):
            z, log_q = scored_draws(q, 1)
            draws.append((z, log_q, torch.randn_like(z)))
        z0, log_qz0, gamma = (torch.cat(parts) for parts in zip(*draws))
        return self._terms(model, x, z0.detach(), log_qz0, create_graph=False, p=p,
                           gamma=gamma)[1]
