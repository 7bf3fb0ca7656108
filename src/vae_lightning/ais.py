"""Annealed importance sampling (AIS; Neal 2001) of log p(x) for a trained model, as Wu et al.
(2017, "On the quantitative analysis of decoder-based generative models") evaluate VAEs, and
bidirectional Monte Carlo (BDMC; Grosse et al. 2015), which brackets log p(x) on data simulated
from the model.

AIS anneals from a normalised distribution p_0(z) that can be sampled (the prior p(z), or the
encoder's q(z|x)) to the posterior p(z|x) through

    f_t(z) = p_0(z)^(1 - beta_t) p(x, z)^beta_t,   0 = beta_0 < beta_1 < ... < beta_T = 1,

with z_0 ~ p_0 and, for t = 1..T, the weight multiplied by f_t(z_{t-1}) / f_{t-1}(z_{t-1}) =
[p(x, z_{t-1}) / p_0(z_{t-1})]^(beta_t - beta_{t-1}), then z_{t-1} moved by a Hamiltonian Monte
Carlo transition that leaves f_t invariant (``leapfrog`` steps, a Metropolis correction). The
weight w is an unbiased estimate of Z_T / Z_0 = p(x), so log of the mean of ``chains``
independent weights is a stochastic lower bound on log p(x) (Jensen), which tightens as T grows.
Unlike the IW estimate, its gap does not depend on how good q is once T is large.

Run backwards from an exact posterior sample (which only simulated data give: z ~ p(z),
x ~ p(x|z)), the same chain estimates 1 / p(x) without bias, so minus its log is a stochastic
upper bound on log p(x): the two together (``bdmc``) bracket the true value, and the width of the
bracket measures how far the forward estimate on such data may be from it.

The Hamiltonian moves are in R^latent: a latent space confined to a sphere, one-hot blocks or a
codebook is refused, as is a start at q(z|x) for a family without a density at any z (planar,
radial and Sylvester flows: start from the prior). The moves' step sizes, one per data point
and annealing step, are tuned by a pilot run of a few chains towards an acceptance rate of 0.65
(multiplied by 1.02 or 0.98 after each move, within [1e-4, 0.5], as Wu et al.'s code adapts
them), then held fixed for the chains that give the estimate, so that every move leaves its
f_t invariant and the estimate of p(x) stays unbiased; each move draws its step uniformly in
[0.5, 1.5] times that size. A model of the labels (M2) is annealed for each class in turn and
the classes summed, log sum_y p(y) p^(x|y), as ``vae-eval`` does for the IW estimate.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from vae_lightning import log_likelihood
from vae_lightning.errors import ConfigError
from vae_lightning.inference import Inference
from vae_lightning.parts import Parts, confined_space

log = logging.getLogger(__name__)

Start = Literal["prior", "posterior"]
Schedule = Literal["sigmoid", "linear"]
TARGET_ACCEPTANCE = 0.65
PILOT_CHAINS = 4  # chains a point of the run that tunes the step sizes
STEP_RANGE = (1e-4, 0.5)


@dataclass
class AIS:
    """Per data point: the AIS estimate ``log_px`` (``[batch]``, nats) and the log-weights of
    its chains (``[chains, batch]``; a reverse run's, of its estimates of 1 / p(x));
    ``acceptance``, the mean acceptance rate of the Hamiltonian moves; ``ess``, each point's
    effective sample size over its chains, (sum w)^2 / sum w^2 (1 to ``chains``: a small one
    says the chains disagree and the estimate rests on few of them)."""

    log_px: Tensor
    log_w: Tensor
    acceptance: float

    @property
    def ess(self) -> Tensor:
        return torch.exp(2 * torch.logsumexp(self.log_w, 0) - torch.logsumexp(2 * self.log_w, 0))


def schedule(steps: int, kind: Schedule = "sigmoid", sharpness: float = 4.0) -> Tensor:
    """beta_0 = 0 < ... < beta_T = 1 (float64, ``steps`` + 1 values): ``linear``, or the
    ``sigmoid`` schedule of Grosse et al. (2015), sigma(delta (2t/T - 1)) rescaled to [0, 1],
    denser at both ends where the annealed distributions change fastest."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"AIS steps={steps!r}: a whole number of at least 1 is expected.")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ValueError(f"AIS schedule={kind!r}: expected 'sigmoid' or 'linear'.")
    s = torch.sigmoid(sharpness * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def refusal(model: Parts, start: Start) -> str | None:
    """Why AIS cannot run on this model from ``start``, in one sentence; None where it can."""
    confined = confined_space(model.prior)
    if confined is not None:
        return (f"AIS moves z by Hamiltonian dynamics in R^{model.latent}, and this model's "
                f"latent space is confined to {confined}; estimate its log p(x) with the IW "
                "estimate (vae-eval eval.k)")
    if start not in ("prior", "posterior"):
        return f"AIS start={start!r}: expected 'prior' or 'posterior'"
    if start == "posterior" and "density" not in getattr(model.encoder.posterior, "features", ()):
        return (f"AIS start='posterior' anneals from q(z|x), which needs its density at any z, "
                f"and the posterior {model.encoder.posterior!r} has none (a flow whose inverse "
                "is not computed); use start='prior'")
    return None


def ais(model: Parts, x: Tensor, steps: int = 500, chains: int = 16, leapfrog: int = 10,
        start: Start = "prior", kind: Schedule = "sigmoid", step_size: float = 0.01,
        y: Tensor | None = None) -> AIS:
    """The AIS estimate of log p(x) for each row of ``x`` (see the module's docstring): ``steps``
    annealing distributions, ``chains`` independent chains a point, ``leapfrog`` steps a
    Hamiltonian move, from the prior or from q(z|x) (``start``). A conditional model's: of
    log p(x|y) given ``y``; a model of the labels (M2) without ``y``: of log p(x), the classes
    enumerated. ``x``: a batch of inputs, or one (a batch of one); ``y``: a label (or condition
    vector) per point, or one class for all, as the model's methods take them."""
    _check(model, start, chains, leapfrog, step_size)
    x, y = _points(model, x, y)
    betas = schedule(steps, kind)
    with _evaluating(model):
        labels = None
        if y is None and getattr(model, "classes", None) is not None:
            objective = getattr(model, "objective", None)
            with torch.no_grad():
                labels = objective.latent_labels(x) if objective is not None else None
            if labels is None:
                raise ValueError("AIS of a conditional model bounds log p(x|y): give the labels "
                                 "y (or condition vectors) of the points.")
        if labels is None:
            return _anneal(model, x, y, betas, chains, leapfrog, start, step_size)
        # log p(x) = log sum_y p(y) p(x|y), each p(x|y) estimated without bias by its chains.
        log_py = labels[0]
        runs = [_anneal(model, x, torch.full((len(x),), c, dtype=torch.long, device=x.device),
                        betas, chains, leapfrog, start, step_size) for c in range(len(log_py))]
    log_w = torch.logsumexp(torch.stack([r.log_w + p for r, p in zip(runs, log_py.tolist())]),
                            0)
    return AIS(_log_mean_exp(log_w), log_w, sum(r.acceptance for r in runs) / len(runs))


def bdmc(model: Parts, n: int, steps: int = 500, chains: int = 16, leapfrog: int = 10,
         start: Start = "prior", kind: Schedule = "sigmoid",
         step_size: float = 0.01) -> tuple[Tensor, AIS, AIS]:
    """Bidirectional Monte Carlo on ``n`` points simulated from the model, z ~ p(z), x ~ p(x|z):
    ``(x, forward, reverse)``, forward AIS (a stochastic lower bound on each log p(x)) and the
    reverse chain from the simulated z (``reverse.log_px``, a stochastic upper bound). The true
    log p(x) lies between the two up to their Monte-Carlo error; their gap bounds the forward
    estimate's error on data like the model's own."""
    _check(model, start, chains, leapfrog, step_size)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"BDMC n={n!r}: a whole number of points, at least 1, is expected.")
    if getattr(model, "classes", None) is not None:
        raise ValueError("BDMC simulates (z, x) from p(z) p(x|z): a conditional model has no "
                         "p(x) to simulate from without a label distribution.")
    betas = schedule(steps, kind)
    with _evaluating(model):
        with torch.no_grad():
            z = model.prior.distribution().sample((n,))
            x = model.decoder(z).sample()
        forward = _anneal(model, x, None, betas, chains, leapfrog, start, step_size)
        reverse = _anneal(model, x, None, betas, chains, leapfrog, start, step_size, exact=z)
    return x, forward, reverse


def _check(model: Parts, start: Start, chains: int, leapfrog: int, step_size: float) -> None:
    """One ValueError naming the argument where AIS cannot run as asked."""
    problem = refusal(model, start)
    if problem is not None:
        raise ValueError(problem + ".")
    for name, value in (("chains", chains), ("leapfrog", leapfrog)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"AIS {name}={value!r}: a whole number of at least 1 is expected.")
    if not (isinstance(step_size, int | float) and not isinstance(step_size, bool)
            and STEP_RANGE[0] <= step_size <= STEP_RANGE[1]):
        raise ValueError(f"AIS step_size={step_size!r}: a number in [{STEP_RANGE[0]}, "
                         f"{STEP_RANGE[1]}] is expected.")


def _points(model: Parts, x: Tensor, y: Tensor | int | None
            ) -> tuple[Tensor, Tensor | None]:
    """``x`` and ``y`` as a VAE's own methods take them (``inference.Inference``): its inputs
    checked, one input as a batch of one; ``y`` one label (or condition vector) a point, or one
    class for all, and refused for a model without labels (it was ignored). An int ``y`` failed
    in the chains' copies, a label short of the points was counted in chains x points, and one
    input without its batch dimension stopped in a broadcast: tracebacks. A model without those
    methods (``Parts``) is taken as given."""
    if not isinstance(model, Inference):
        return x, y
    x = model._inputs(x)
    x = x[None] if model._one(x) else x
    if y is not None:
        y = model.labels(y, len(x), "ais")
        if len(y) != len(x):
            raise ValueError(f"ais: {len(y)} labels (or condition vectors) given for {len(x)} "
                             "points: give one a point, or one class for all.")
    return x, y


@contextlib.contextmanager
def _evaluating(model: Parts) -> Iterator[None]:
    """The model in evaluation mode (dropout off, normalisation layers on their running
    statistics) for the run, then as it was."""
    training = bool(getattr(model, "training", False))
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def _log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, 0) - math.log(len(log_w))


def _anneal(model: Parts, x: Tensor, y: Tensor | None, betas: Tensor, chains: int,
            leapfrog: int, start: Start, step_size: float, exact: Tensor | None = None) -> AIS:
    """One AIS estimate for each row of ``x`` (with ``exact``, posterior samples of x, one per
    point: the reverse run, whose ``log_px`` is minus the log of its estimate of 1 / p(x)).

    The Hamiltonian moves' step sizes are tuned first, by a pilot run of ``PILOT_CHAINS`` chains
    a point that adapts each point's step size after every move towards an acceptance rate of
    ``TARGET_ACCEPTANCE``; the estimate then comes from ``chains`` fresh chains a point moved
    with the pilot's step sizes. Adapting within the estimating chains would make each move
    depend on those chains' own past, so that the moves would no longer leave each f_t
    invariant, and the estimate of p(x) would no longer be unbiased."""
    pilot = _run(model, x, y, betas, min(chains, PILOT_CHAINS), leapfrog, start,
                 _Steps(step_size, len(betas) - 2, len(x), x.device), exact)
    return _run(model, x, y, betas, chains, leapfrog, start, pilot.steps, exact).result


@dataclass
class _Run:
    result: AIS
    steps: _Steps


def _run(model: Parts, x: Tensor, y: Tensor | None, betas: Tensor, chains: int, leapfrog: int,
         start: Start, steps: _Steps, exact: Tensor | None) -> _Run:
    """AIS over all of ``x``'s chains at once (``chains`` x batch rows, chain-major), its moves'
    step sizes from ``steps`` (adapted as it goes where ``steps.adapting``)."""
    batch = len(x)
    xs = x.repeat(chains, *[1] * (x.dim() - 1))
    ys = None if y is None else y.repeat(chains, *[1] * (y.dim() - 1))
    with model.given(ys), torch.no_grad():
        q = model.encoder(xs) if start == "posterior" else None
        prior = model.prior.distribution()
        log_p0: Callable[[Tensor], Tensor] = q.log_prob if q is not None else prior.log_prob
        if exact is not None:
            z = exact.repeat(chains, *[1] * (exact.dim() - 1))
        else:
            start_at = q if q is not None else prior
            # A conditional prior has a distribution per point (batch shape [n]), N(0, I) one.
            z = start_at.sample(() if start_at.batch_shape else (len(xs),))

        def target(z: Tensor) -> tuple[Tensor, Tensor]:
            """log p_0(z) and gap(z) = log p(x, z) - log p_0(z), the log of f_1 / f_0, per
            chain: log f_beta(z) = log p_0(z) + beta gap(z)."""
            log_q = log_p0(z)
            if q is None:  # p_0 = p(z): the likelihood alone
                return log_q, model.decoder(z).log_prob(xs)
            return log_q, model.decoder(z).log_prob(xs) + prior.log_prob(z) - log_q

        hmc = _Hamiltonian(target, leapfrog, chains, z)
        log_w = torch.zeros(len(xs), dtype=torch.float64, device=x.device)
        point = hmc.point(z)
        order = betas if exact is None else betas.flip(0)
        for i in range(1, len(order)):
            log_w += (order[i] - order[i - 1]).item() * point.gap.double()
            if i < len(order) - 1:  # the last move would not change the estimate
                point = hmc.move(point, order[i].item(), steps, i - 1)
    log_w = log_w.view(chains, batch)
    estimate = _log_mean_exp(log_w)
    # A reverse run's log_w are those of its estimates of 1 / p(x) (its ESS is theirs).
    result = AIS(estimate if exact is None else -estimate, log_w, hmc.acceptance())
    return _Run(result, steps)


class _Steps:
    """The step size of each Hamiltonian move for each data point, ``[moves, batch]``: while
    ``adapting``, move t's sizes are set from move t-1's and its acceptances (multiplied by 1.02
    where the point's running acceptance rate is above ``TARGET_ACCEPTANCE``, else by 0.98,
    within ``STEP_RANGE``, as Wu et al.'s code adapts them); once adapted, fixed."""

    def __init__(self, initial: float, moves: int, batch: int, device: torch.device) -> None:
        self.sizes = torch.full((max(moves, 0), batch), float(initial), device=device)
        self.rate = torch.full((batch,), TARGET_ACCEPTANCE, device=device)
        self.adapting = True

    def at(self, move: int) -> Tensor:
        """The step sizes of move ``move``, per data point ``[batch]``."""
        return self.sizes[move]

    def update(self, move: int, accept: Tensor) -> None:
        """After move ``move``: its acceptances ``[chains, batch]`` set the next move's sizes."""
        if not self.adapting:
            return
        self.rate = 0.9 * self.rate + 0.1 * accept.float().mean(0)
        if move + 1 < len(self.sizes):
            factor = torch.where(self.rate > TARGET_ACCEPTANCE, 1.02, 0.98)
            self.sizes[move + 1] = (self.sizes[move] * factor).clamp(*STEP_RANGE)
        else:
            self.adapting = False


@dataclass
class _Point:
    """The chains' current z with log p_0(z), gap(z) and the gradients of both, from which
    log f_beta = log p_0 + beta gap and its gradient follow for any beta: a move starts from
    where the last one ended, under the next f_t, without recomputing them."""

    z: Tensor
    log_p0: Tensor
    gap: Tensor
    grad_p0: Tensor
    grad_gap: Tensor

    def log_f(self, beta: float) -> Tensor:
        return self.log_p0 + beta * self.gap

    def grad(self, beta: float) -> Tensor:
        return self.grad_p0 + beta * self.grad_gap

    def where(self, keep: Tensor, other: _Point) -> _Point:
        """This point for the chains where ``keep`` (``[chains]``), ``other`` elsewhere."""
        def pick(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(keep.view((-1,) + (1,) * (a.dim() - 1)), a, b)
        return _Point(*(pick(getattr(self, f), getattr(other, f)) for f in
                        ("z", "log_p0", "gap", "grad_p0", "grad_gap")))


class _Hamiltonian:
    """Hamiltonian Monte Carlo moves for ``chains`` chains of each data point at once
    (``like``: their current z, chain-major), with step sizes per data point (``_Steps``);
    ``target(z)`` gives log p_0(z) and gap(z) per chain."""

    def __init__(self, target: Callable[[Tensor], tuple[Tensor, Tensor]],
                 leapfrog: int, chains: int, like: Tensor) -> None:
        self.target, self.leapfrog, self.chains = target, leapfrog, chains
        self.shape = (len(like),) + (1,) * (like.dim() - 1)  # one value per chain
        self.accepted, self.moves = 0.0, 0

    def point(self, z: Tensor) -> _Point:
        """``z`` with log p_0, gap and their gradients (the second backward pass is the
        decoder's; the first, through log p_0 alone, is cheap)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_p0, gap = self.target(z)
            (grad_p0,) = torch.autograd.grad(log_p0.sum(), z, retain_graph=True)
            (grad_gap,) = torch.autograd.grad(gap.sum(), z)
        return _Point(z.detach(), log_p0.detach(), gap.detach(), grad_p0, grad_gap)

    def move(self, start: _Point, beta: float, steps: _Steps | Tensor, index: int = 0
             ) -> _Point:
        """One HMC transition from ``start`` leaving f_beta invariant: the new point. ``steps``:
        the step sizes (``_Steps``, move ``index``; or a tensor, one size per chain)."""
        sizes = steps.at(index).repeat(self.chains) if isinstance(steps, _Steps) else steps
        z = start.z
        momentum = torch.randn_like(z)
        kinetic = 0.5 * momentum.flatten(1).pow(2).sum(-1)
        # Each move's step a uniform draw in [0.5, 1.5] x the point's: a fixed trajectory length
        # can be close to a multiple of a Gaussian direction's half period, where every move
        # nearly reverses the last and z^2 (the log-likelihood) barely mixes (Neal 2011).
        step = (sizes * torch.empty_like(sizes).uniform_(0.5, 1.5)).view(self.shape).to(z.dtype)
        new, p = start, momentum + 0.5 * step * start.grad(beta)
        for i in range(self.leapfrog):
            new = self.point(new.z + step * p)
            if i < self.leapfrog - 1:
                p = p + step * new.grad(beta)
        p = p + 0.5 * step * new.grad(beta)
        new_kinetic = 0.5 * p.flatten(1).pow(2).sum(-1)
        log_ratio = (new.log_f(beta) - new_kinetic) - (start.log_f(beta) - kinetic)
        accept = torch.rand_like(log_ratio).log() < log_ratio  # NaN: rejected
        if isinstance(steps, _Steps):
            steps.update(index, accept.view(self.chains, -1))
        self.accepted += accept.float().mean().item()
        self.moves += 1
        return new.where(accept, start)

    def acceptance(self) -> float:
        return self.accepted / self.moves if self.moves else math.nan


def resolve_start(model: Parts, start: Start | Literal["auto"]) -> Start:
    """``auto``: from q(z|x) where its family has a density at any z (a better start than the
    prior, fewer steps for the same gap), else from the prior."""
    if start != "auto":
        return start
    features = getattr(model.encoder.posterior, "features", ())
    return "posterior" if "density" in features else "prior"


def _labels_for(model: Parts, x: Tensor, y: Tensor | None) -> Tensor | None:
    """The labels AIS takes for a data batch: None for a model of the labels (M2: the classes
    are enumerated) and for an unconditional one, the data's labels or condition vectors for a
    conditional VAE (log p(x|y))."""
    if getattr(model, "classes", None) is None:
        return None
    with torch.no_grad(), model.given(y):
        if model.objective.latent_labels(x[:1]) is not None:
            return None
    return y


class Progress(log_likelihood.Progress):
    """Where an AIS over many batches stands (``over_batches``), saved after each batch, so that
    a stopped ``vae-eval eval.ais_steps=...`` goes on from there, to the same numbers: per
    batch, the points' estimates, the fewest effective chains of a point and the mean
    acceptance rate (as ``log_likelihood.Progress`` keeps the IW estimate's batches, checked
    the same way before it is trusted)."""

    PARTS = ("log_px", "ess_min", "acceptance")
    ON_DEVICE = ()

    @staticmethod
    def inconsistency(done: int, parts: dict[str, list]) -> str | None:
        if wrong := log_likelihood.entries_wrong(done, parts, Progress.PARTS):
            return wrong
        for i in range(done):
            log_px, ess, acceptance = (parts[name][i] for name in Progress.PARTS)
            if not (isinstance(log_px, Tensor) and log_px.is_floating_point()
                    and log_px.dim() == 1 and len(log_px) > 0
                    and not bool(torch.isnan(log_px).any()) and bool((log_px < math.inf).all())):
                return f"batch {i}'s estimates are not one number (not NaN or +inf) per point"
            if not (isinstance(ess, float) and ess >= 1 - 1e-6 and isinstance(acceptance, float)
                    and (math.isnan(acceptance) or 0 <= acceptance <= 1)):  # NaN: no move
                return (f"batch {i}'s fewest effective chains (at least 1) or acceptance rate "
                        "(between 0 and 1) is not a number in its range")
        return None


def over_batches(model: Parts, batches: Iterable[tuple[Tensor, Tensor | None]], steps: int,
                 chains: int = 8, leapfrog: int = 10, start: Start = "posterior",
                 progress: Progress | None = None) -> dict[str, Any]:
    """AIS of every point of ``batches`` (``(x, y)`` as the data modules serve them): the
    per-point estimates ``log_px`` (``[n]``, on the CPU), the smallest effective number of
    chains of any point (``ess_min``), the mean acceptance rate and the seconds taken (over
    every run that took part). ``progress``: where the batches done are kept and gone on from
    (``Progress``; the batches done are still drawn, so that data drawn afresh stay in step,
    and each must hold as many points as the file keeps of it)."""
    parts: dict[str, list] = {name: [] for name in Progress.PARTS}
    done, earlier = 0, 0.0
    batches = iter(batches)
    if progress is not None and (restored := progress.load(torch.device("cpu"))) is not None:
        done, parts, earlier = restored
        for i, (x, _) in enumerate(itertools.islice(batches, done)):
            if len(x) != len(parts["log_px"][i]):
                raise ConfigError(f"{progress.path} does not fit this evaluation (its batch {i} "
                                 f"holds {len(parts['log_px'][i])} points, and the data's "
                                 f"{len(x)}): delete it to run AIS from the start.")
        log.info("Going on with AIS after its first %d batches (%s).", done, progress.path)
    began = time.perf_counter()
    for i, (x, y) in enumerate(batches, start=done):
        result = ais(model, x, steps=steps, chains=chains, leapfrog=leapfrog, start=start,
                     y=_labels_for(model, x, y))
        parts["log_px"].append(result.log_px.cpu())
        parts["ess_min"].append(result.ess.min().item())
        parts["acceptance"].append(float(result.acceptance))
        if progress is not None:
            progress.save(i + 1, parts, x.device, earlier + time.perf_counter() - began)
    return {"log_px": torch.cat(parts["log_px"]), "ess_min": min(parts["ess_min"]),
            "acceptance": sum(parts["acceptance"]) / len(parts["acceptance"]),
            "seconds": earlier + time.perf_counter() - began}


def hours(model: Parts, batch: tuple[Tensor, Tensor | None], points: int, steps: int,
          chains: int = 8, leapfrog: int = 10, start: Start = "posterior") -> float:
    """The hours ``over_batches`` would take on ``points`` points in batches like ``batch``:
    a short run of 3 annealing steps on it, timed (in a forked random stream, so that the
    estimate's draws stay those of the seed), scaled to ``steps`` (the pilot's chains
    included) and to the number of batches."""
    x, y = batch
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        began = time.perf_counter()
        ais(model, x, steps=3, chains=chains, leapfrog=leapfrog, start=start,
            y=_labels_for(model, x, y))
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - began
    # 3 steps: 2 moves a run; ``steps``: steps - 1 moves a run.
    per_move = seconds / 2
    return per_move * max(steps - 1, 1) * math.ceil(points / len(x)) / 3600
