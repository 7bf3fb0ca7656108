"""What every objective shares: the terms of the bound, samples of z scored under the model, the
ELBO with SGVB estimator A or B, and the importance-weighted bound.

- ELBO (eq. 3): L(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), estimated with L samples
  z_l = g_phi(eps_l, x), with the analytic KL (SGVB estimator B, eq. 7) where torch.distributions'
  KL registry has the pair (q, p), else with the Monte-Carlo KL log q(z_l|x) - log p(z_l)
  (estimator A, eq. 6).
- Importance-weighted bound (Burda et al. 2015): log (1/k) sum_i p(x, z_i) / q(z_i|x); k = 1 is
  estimator A of the ELBO, and it tightens towards log p(x) as k grows.

All are per data point, in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from vae_lightning.parts import Bound, Parts, Samples, scored_draws, scored_sample

KL = Literal["auto", "analytic", "mc"]


def draw(model: Parts, x: Tensor, q: Distribution, p: Distribution, n: int) -> Samples:
    """Draw n reparameterized samples z = g_phi(eps, x) from ``q`` and score them under the
    model's decoder, the prior ``p`` and ``q`` (``parts.scored_sample``)."""
    z, log_qz = scored_sample(q, (n,))
    return Samples(model.decoder(z).log_prob(x), p.log_prob(z), log_qz)


def closed_form_kl(q: Distribution, p: Distribution) -> Tensor | None:
    """KL(q || p) from torch.distributions' registry, or None when the pair has no closed form."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def elbo_estimate(model: Parts, x: Tensor, n_samples: int = 1, kl: KL = "auto",
         q: Distribution | None = None) -> Bound:
    """The ELBO of each row of ``x`` with L = ``n_samples`` samples of ``q`` (default: the
    model's q(z|x)): estimator B (eq. 7) with ``kl="analytic"``, or with ``"auto"`` where the KL
    has a closed form; estimator A (eq. 6) otherwise."""
    q = model.encoder(x) if q is None else q
    p = model.prior.distribution()
    analytic = closed_form_kl(q, p) if kl != "mc" else None
    if analytic is None:
        if kl == "analytic":
            raise ValueError(no_closed_form(q, p))
        return draw(model, x, q, p, n_samples).bound()
    if n_samples == 1:  # the mean over one draw is the draw's value: no sample dimension
        return Bound(model.decoder(q.rsample()).log_prob(x), analytic)
    z = q.rsample((n_samples,))
    return Bound(model.decoder(z).log_prob(x).mean(0), analytic)


def no_closed_form(q: Distribution, p: Distribution) -> str:
    def name(d: Distribution) -> str:
        return type(getattr(d, "base_dist", d)).__name__

    return (f"kl='analytic' needs KL(q || p) in closed form, and torch.distributions has none "
            f"for q = {name(q)}, p = {name(p)}; use model.objective.kl=auto (analytic where it "
            "exists, Monte Carlo otherwise) or model.objective.kl=mc.")


def iw_bound(log_w: Tensor) -> Tensor:
    """The importance-weighted bound log (1/k) sum_i w_i from log-weights ``[k, batch]``."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


@dataclass(frozen=True)
class Auxiliary:
    """An update an objective takes after each step of the model's optimizer, on parameters of
    its own (e.g. FactorVAE's discriminator): ``loss(model, x)`` is minimised over
    ``parameters()`` by the optimizer ``optimizer`` builds over them. The model's optimizer never
    touches those parameters; an objective with parameters is an ``nn.Module``, so that they are
    saved in the model's checkpoints with the optimizers' states."""

    parameters: Callable[[], Iterable[nn.Parameter]]
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    loss: Callable[[Parts, Tensor], Tensor]


class Objective:
    """What training maximises: ``loss(model, x)`` is the minibatch loss to minimise and the
    bound terms to log; ``bound(model, x)`` is the ELBO estimate logged on validation and test
    data and in Fig. 2's curve; ``model`` is the model's parts (``parts.Parts``).
    ``requires`` are the posterior features the objective needs and ``requires_prior`` the
    prior's (``parts.FEATURES``): the model refuses, when it is composed, a posterior or prior
    without them; ``check(model)`` refuses what features cannot say (e.g. a KL pair without a
    closed form). ``method`` names the training algorithm in results and figures.

    ``checkpoint`` is the model that results.json reports: ``"best"``, the checkpoint with the
    best validation ELBO, for objectives that maximise the ELBO; ``"last"``, the final model,
    for those that maximise another bound (selecting them by the ELBO would pick a model by a
    quantity they do not optimise; their papers report the final model)."""

    method = "aevb"
    checkpoint = "best"
    requires: frozenset[str] = frozenset({"rsample"})
    requires_prior: frozenset[str] = frozenset()
    # Whether the loss changes with the optimizer step (a KL schedule, a capacity ramp): a CUDA
    # graph captures one step's loss, so such objectives are not graphed.
    step_dependent = False
    # Whether the loss differentiates through a gradient (create_graph: the HVAE's leapfrog
    # steps follow grad log p(x, z)): torch.compile'd networks cannot take that double backward,
    # so model.compile is refused with it.
    double_backward = False
    # Whether it trains on points whose label is hidden (-1), summing over their classes (M2):
    # a conditional model is otherwise refused data with such points.
    unlabelled = False
    # The fewest points a training minibatch may hold (the MMD's estimate takes pairs: 2):
    # run_checks.check_minibatches refuses, before the first step, a batch size or a training
    # split that makes a smaller one.
    min_batch = 1
    # The proposal of ``log_weights``, in words: vae-eval's k samples, whose mean log-weight is
    # its "elbo" (eval.json's ``proposal``); q's own ELBO unless the objective trains another.
    proposal = "q(z|x): elbo is q's ELBO"

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        raise NotImplementedError

    def bound(self, model: Parts, x: Tensor) -> Bound:
        return elbo_estimate(model, x)

    def latent_labels(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """For a model of the labels (M2): log p(y) ``[K]`` and log q(y|x) ``[batch, K]``, so
        that evaluation bounds log p(x) by summing over the classes
        (``over_labels``); None: the labels are given, and a conditional model's
        bounds are of log p(x|y)."""
        return None

    def check(self, model: Parts) -> None:
        """Raise ``ValueError`` if the model's parts do not suit this objective in a way its
        ``requires`` cannot say."""

    def auxiliary(self) -> Sequence[Auxiliary]:
        """The updates of the objective's own parameters after each model step (none)."""
        return ()

    def log_weights(self, model: Parts, x: Tensor, q: Distribution, p: Distribution,
                    n: int) -> Tensor:
        """Log-weights ``[n, batch]`` of n draws for the importance-weighted estimate of
        log p(x) (``importance_weighted``), each the log of an unbiased estimate of p(x):
        log p(x, z_i) - log q(z_i|x) with z_i ~ q(z|x), the model's posterior as the proposal
        (``proposal_log_weights``). An objective that trains a proposal of its own (the HVAE's
        leapfrog steps from z ~ q) gives that proposal's weights instead."""
        return proposal_log_weights(model, x, q, p, n)

    def logged(self) -> Mapping[str, Tensor]:
        """The named terms of the last ``loss`` besides the bound (e.g. beta-TC's ``mi``,
        ``tc``, ``dwkl``), as detached minibatch means: the model logs each as
        ``train/<name>`` beside ``train/loss`` (none)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def proposal_log_weights(model: Parts, x: Tensor, q: Distribution, p: Distribution,
                         n: int) -> Tensor:
    """log p(x, z_i) - log q(z_i|x) for n draws z_i ~ ``q`` (each by its own draw, in order:
    ``parts.scored_draws``), under the prior ``p``: ``[n, batch]``."""
    z, log_qz = scored_draws(q, n)
    return model.decoder(z).log_prob(x) + p.log_prob(z) - log_qz


@torch.no_grad()
def probe(model: Parts) -> tuple[Distribution, Distribution]:
    """q(z|x) at one all-zero input, and p(z): the kinds of distribution the model's parts make,
    for ``Objective.check``."""
    x = torch.zeros(1, *model.data_shape, device=model.device)
    return model.encoder(x), model.prior.distribution()


def q_reads_generative(model: Parts) -> bool:
    """Whether q(z|x)'s samples or density depend on the generative model's parameters (the
    decoder's or the prior's: the Ladder VAE infers with the prior's top-down networks), probed
    with one draw at one all-zero input (in a forked random stream: the run's draws stay its
    seed's): an objective that trains the two apart cannot keep them apart then."""
    generative = [p for p in (*model.decoder.parameters(), *model.prior.parameters())
                  if p.requires_grad]
    if model.data_shape is None or not generative:
        return False
    x = torch.zeros(1, *model.data_shape, device=model.device)
    cuda = [model.device] if model.device.type == "cuda" else []
    with torch.enable_grad(), torch.random.fork_rng(devices=cuda):
        z, log_q = scored_sample(model.encoder(x))
        reached = z.sum() + log_q.sum()
        return reached.requires_grad and any(
            g is not None for g in torch.autograd.grad(reached, generative, allow_unused=True))


# Input values (batch x pixels) scored per decoder pass when no chunk is given. On a CPU, 2^21
# float32 values (8 MiB) keep a pass's activations and its elementwise log-likelihood within the
# last-level cache, so the evaluation runs at the rate of the decoder's matrix products instead
# of at memory bandwidth (docs/benchmarks.md); on a GPU, larger passes amortise kernel launches.
CPU_CHUNK_VALUES, ACCELERATOR_CHUNK_VALUES = 2**21, 2**26


def auto_chunk(x: Tensor, k: int) -> int:
    """How many of the k samples to score per decoder pass for the batch ``x``: the most whose
    chunk x batch x pixels stays within the budget for x's device (at least 1, at most k)."""
    budget = CPU_CHUNK_VALUES if x.device.type == "cpu" else ACCELERATOR_CHUNK_VALUES
    return max(1, min(k, budget // max(1, x.numel())))


@torch.no_grad()
def importance_weighted(model: Parts, x: Tensor, k: int,
                        chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Per data point of ``x``, from the same k samples z_i ~ q(z|x): the ELBO (the mean
    log-weight, estimator A with L = k) and the IW estimate of log p(x), log (1/k) sum_i w_i,
    which is >= it (Jensen) and the standard test log-likelihood at k = 5000.

    The samples are scored ``chunk`` at a time, one decoder pass per chunk for all points
    (memory ~ chunk x batch x pixels), and combined with a running logsumexp. Each z_i is drawn by
    its own draw in order (``parts.scored_draws``), so the estimate is the same for every
    ``chunk`` given the random state. ``chunk=None``: ``auto_chunk``."""
    if chunk is None:
        chunk = auto_chunk(x, k)
    if k < 1 or chunk < 1:
        raise ValueError(f"k={k} and chunk={chunk} must both be at least 1.")
    q = model.encoder(x)
    p = model.prior.distribution()  # once: a VampPrior encodes its pseudo-inputs
    # The objective's proposal (Objective.log_weights); q(z|x) for parts without an objective.
    objective = getattr(model, "objective", None)
    weigh = proposal_log_weights if objective is None else objective.log_weights
    running_lse = torch.full((x.shape[0],), -math.inf, device=x.device)
    running_sum = torch.zeros(x.shape[0], device=x.device)
    for start in range(0, k, chunk):
        log_w = weigh(model, x, q, p, min(chunk, k - start))
        running_lse = torch.logaddexp(running_lse, torch.logsumexp(log_w, dim=0))
        running_sum += log_w.sum(0)
    return running_sum / k, running_lse - math.log(k)


def over_labels(model: Parts, x: Tensor, k: int, chunk: int | None, log_py: Tensor,
                log_qy: Tensor) -> tuple[Tensor, Tensor]:
    """For a model of the labels (M2), per data point: the IW estimate of log p(x) with the
    classes enumerated, log sum_y p(y) p^(x|y), p^(x|y) = (1/k) sum_i w_i(y) from k samples
    z ~ q(z|x, y) per class (unbiased for p(x|y), so the sum is unbiased for p(x) and its log a
    lower bound, tightening with k); and the ELBO U(x) = sum_y q(y|x) [ELBO(x|y) + log p(y)] +
    H(q(y|x)), each class's ELBO the mean log-weight of the same samples."""
    elbos, iws = [], []
    for c in range(len(log_py)):
        with model.given(torch.full((len(x),), c, dtype=torch.long, device=x.device)):
            elbo, iw = importance_weighted(model, x, k, chunk)
        elbos.append(elbo)
        iws.append(iw)
    elbo, iw = torch.stack(elbos, -1), torch.stack(iws, -1)  # [batch, K]
    return ((log_qy.exp() * (elbo + log_py - log_qy)).sum(-1),
            torch.logsumexp(iw + log_py, -1))
