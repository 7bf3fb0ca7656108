"""The parts' contract: what an objective, a metric or the graphed step may use of a model, and the
values they exchange. The bottom layer of the package: it imports only torch.

- ``Bound`` and ``Samples``: the per-data-point terms of a bound, and samples of z scored under
  the model.
- ``Parts``: the model as an objective sees it: ``encoder`` (q(z|x)), ``decoder`` (p(x|z)),
  ``prior`` (p(z)), their sizes, device and the optimizer step ``global_step``. ``module.VAE``
  is one; objectives never import it.
- Features: what a posterior family or a prior offers (``FEATURES``), which objectives and priors
  require (``requires``); ``unmet`` names a pair that cannot work, so the model refuses it when it
  is composed, before training, with one line.
- ``Conditional``: a part that depends on a class label (``conditional``); the model hands it
  each batch's labels, so objectives never see them.
- ``scored_sample`` / ``scored_draws``: z ~ q with log q(z) from the same draw, so that a flow
  whose inverse is not computable (a planar flow) scores its samples through its forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import Distribution, TransformedDistribution
from torch.distributions.utils import _sum_rightmost


class Bound(NamedTuple):
    """Per-data-point terms of the lower bound, each of shape ``[batch]``."""

    recon: Tensor  # E_q[log p(x|z)]
    kl: Tensor  # KL(q(z|x) || p(z))

    @property
    def elbo(self) -> Tensor:
        return self.recon - self.kl


class Samples(NamedTuple):
    """log p(x|z_l), log p(z_l) and log q(z_l|x) for n samples z_l ~ q(z|x): each ``[n, batch]``."""

    log_px_z: Tensor
    log_pz: Tensor
    log_qz: Tensor

    @property
    def log_w(self) -> Tensor:
        """Log importance weights log p(x, z_l) - log q(z_l|x)."""
        return self.log_px_z + self.log_pz - self.log_qz

    def bound(self) -> Bound:
        """The ELBO by estimator A (eq. 6): Monte-Carlo reconstruction and KL."""
        return Bound(self.log_px_z.mean(0), (self.log_qz - self.log_pz).mean(0))


@runtime_checkable
class Posterior(Protocol):
    """q(z|x): ``encoder(x)`` is a distribution over the whole latent vector (event shape
    ``[latent]``, batch shape ``x``'s batch); ``params(x)`` the network's output and
    ``posterior(params)`` the family that turns it into that distribution (so that DReG can hold
    the parameters fixed: ``posterior(params.detach())``); ``location(q)`` the point that stands
    for q (its mean, or a location where the mean does not exist or is intractable)."""

    posterior: Family

    def __call__(self, x: Tensor) -> Distribution: ...

    def params(self, x: Tensor) -> Tensor: ...

    def location(self, q: Distribution) -> Tensor: ...


@runtime_checkable
class Conditional(Protocol):
    """A part that depends on a class label y (``conditional``: a CVAE's networks, p(z|y)):
    ``given(y)`` hands it the labels ``[batch]`` of the data it is about to see (None: none any
    more); ``classes`` is the number of classes K, labels 0..K-1."""

    classes: int

    def given(self, y: Tensor | None) -> None: ...


@runtime_checkable
class Stepped(Protocol):
    """A part whose behaviour follows the model's optimizer step t (a relaxed posterior's
    annealed temperature): the model hands it t (from 0, restored on resume) by ``at_step(t)``
    before each training step's loss, the clock the objectives' schedules read
    (``Parts.global_step``)."""

    def at_step(self, step: int) -> None: ...


class Family(Protocol):
    """A posterior family: ``n_params(latent)`` network outputs per data point, mapped by
    ``__call__(params)`` to q(z|x) over ``latent`` dimensions; ``features`` (``FEATURES``) says
    what it offers; ``bind(prior)``, called once when the model is composed, hands it the prior
    (a q built with p's networks keeps it); ``informative()``, the family of the part of z that
    carries all of I_q(x; z), from the same parameters (itself but for a bottom-up chain)."""

    features: frozenset[str]

    def n_params(self, latent: int) -> int: ...

    def __call__(self, params: Tensor) -> Distribution: ...

    def location(self, q: Distribution) -> Tensor: ...

    def bind(self, prior: Prior) -> None: ...

    def informative(self) -> Family: ...


class Decoder(Protocol):
    """p(x|z): ``decoder(z)`` is a distribution over images whose ``log_prob`` sums over pixels."""

    def __call__(self, z: Tensor) -> Distribution: ...


class Prior(Protocol):
    """p(z): ``distribution()``, ``log_prob(z)``, ``sample(n)``; ``features`` it offers and the
    posterior features it ``requires``."""

    latent: int
    features: frozenset[str]
    requires: frozenset[str]

    def distribution(self) -> Distribution: ...

    def log_prob(self, z: Tensor) -> Tensor: ...

    def sample(self, n: int) -> Tensor: ...


class Parts(Protocol):
    """The model as objectives see it: its parts, the sizes they were built for, the device and
    the optimizer step (a schedule's clock, e.g. KL warm-up); ``given(y)``, a context in which
    the parts that depend on a class label (``Conditional``) take the labels ``y`` (an objective
    that sums over the classes, M2's, gives each in turn)."""

    encoder: Posterior
    decoder: Decoder
    prior: Prior
    latent: int
    data_shape: tuple[int, ...]
    device: torch.device
    global_step: int

    def given(self, y: Tensor | None) -> AbstractContextManager[None]: ...


# What a posterior (or a prior: "factorized") may offer, and why a part would need it.
FEATURES: Mapping[str, str] = {
    "rsample": "reparameterized samples z = g(eps, x), through which gradients reach q's "
               "parameters",
    "density": "a density log q(z|x) at any z, not only at its own samples",
    "finite_variance": "a finite second moment E_q[z^2] (without it the KL to a prior with "
                       "Gaussian tails is infinite: a Student-t needs df > 2, or take "
                       "model/prior=vamp, whose components are q's own family)",
    "factorized": "a product of one distribution per latent dimension",
    "one_hot_blocks": "a distribution over one-hot blocks of categories (the uniform categorical "
                      "prior of relaxed categorical latents)",
    "codebook": "a distribution over the code maps of a vector quantizer's codebook (the VQ-VAE's "
                "uniform prior)",
    "sphere": "a distribution on the unit sphere of the latent space, with a density with respect "
              "to the sphere's surface measure (the von Mises-Fisher posterior and the "
              "hyperspherical uniform prior: model=svae)",
}


# Prior features whose latent space is not all of R^latent: a density fitted on R^latent, or a
# coordinate swept along a line (traversals), gives z where the decoder was never trained.
CONFINED = {"sphere": "the unit sphere (model=svae)",
            "one_hot_blocks": "one-hot blocks of categories (model=gumbel)",
            "codebook": ("the code maps of its codebook (model=vq_vae: the decoder reads only "
                         "codebook vectors; sampler=pixelcnn fits a prior over the code maps)")}


def confined_space(prior: object, kept: frozenset[str] = frozenset()) -> str | None:
    """What the latent space of a model with this prior is confined to, in words (``CONFINED``);
    None where it is all of R^latent, or one of the spaces ``kept`` (those a fitted sampler's
    draws stay in: ``samplers.Sampler.stays_in``)."""
    features = getattr(prior, "features", frozenset())
    return next((CONFINED[name] for name in CONFINED if name in features and name not in kept),
                None)


def latent_path(prior: object, z1: Tensor, z2: Tensor, t: Tensor) -> Tensor:
    """Latent points along the path from ``z1`` to ``z2`` ``[..., latent]`` at the fractions
    ``t`` (broadcast against them): the prior's own ``path`` where it has one (the sphere's
    great circle: ``priors.hyperspherical``), else the straight line (1 - t) z1 + t z2, the
    shortest in R^latent; a ``ValueError`` in a space a line leaves (``confined_space``: one-hot
    blocks, a codebook), whose points between would be z the decoder was never trained on."""
    own = getattr(prior, "path", None)
    if callable(own):
        return own(z1, z2, t)
    confined = confined_space(prior)
    if confined is not None:
        raise ValueError(f"interpolate: the points between two latent points are on the line "
                         f"between them, but the model's latent space is {confined}, which the "
                         "line leaves: its images would be decoded from z the decoder was never "
                         "trained on.")
    return (1 - t) * z1 + t * z2


def unmet(offered: frozenset[str], needs: Mapping[str, frozenset[str]], what: str) -> list[str]:
    """One sentence per part of ``needs`` (its name -> the features it requires) that ``what``
    (offering ``offered``) does not satisfy."""
    found = []
    for part, required in needs.items():
        missing = sorted(set(required) - set(offered))
        if missing:
            found.append(f"{part} needs {what} to have "
                         + " and ".join(FEATURES[name] for name in missing)
                         + f", which {what} does not have ({', '.join(missing)})")
    return found


def refuse_unfit(posterior: Family, prior: Prior, objective: object) -> None:
    """Refuse, with one line naming each unmet need, a posterior, prior and objective that cannot
    work together (``requires`` / ``requires_prior`` against ``features``), when the model is
    composed: before training, never at its first step."""
    problems = unmet(posterior.features, {f"the objective {objective!r}": objective.requires,
                                          f"the prior {type(prior).__name__}": prior.requires},
                     f"the posterior {posterior!r}")
    problems += unmet(prior.features, {f"the objective {objective!r}": objective.requires_prior},
                      f"the prior {type(prior).__name__}")
    if problems:
        raise ValueError("; ".join(problems) + ". Choose a posterior, prior and objective "
                         "that fit (docs/configuration.md, the parts' features).")


def capturable_sample(d: Distribution, shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
    """A draw of ``d`` without gradients that a CUDA graph can capture: by ``rsample`` where d
    has it (torch's ``Normal.sample`` checks that the scale is >= 0 by reading a value back to
    the host, which a capture forbids; on the CPU ``rsample`` draws the same numbers: normal_,
    then * scale + loc), else by ``sample``."""
    with torch.no_grad():
        return d.rsample(shape) if d.has_rsample else d.sample(shape)


def scored_sample(q: Distribution, shape: torch.Size | tuple[int, ...] = ()
                  ) -> tuple[Tensor, Tensor]:
    """A reparameterized draw z ~ q of ``shape`` (before q's own shape) and log q(z), computed
    from the same draw: through the flow's forward pass for a ``TransformedDistribution`` (its
    inverse need not exist), by q itself where it scores its own draws
    (``rsample_and_log_prob``: a chain of stochastic layers), else ``q.log_prob(z)``."""
    if hasattr(q, "rsample_and_log_prob"):
        return q.rsample_and_log_prob(shape)
    if not isinstance(q, TransformedDistribution):
        z = q.rsample(shape)
        return z, q.log_prob(z)
    event_dim = len(q.event_shape)
    x = q.base_dist.rsample(shape)
    log_prob = _sum_rightmost(q.base_dist.log_prob(x), event_dim - len(q.base_dist.event_shape))
    for transform in q.transforms:
        y = transform(x)
        log_prob = log_prob - _sum_rightmost(transform.log_abs_det_jacobian(x, y),
                                             event_dim - transform.domain.event_dim)
        x = y
    return x, log_prob


def scored_draws(q: Distribution, n: int) -> tuple[Tensor, Tensor]:
    """n draws z_i ~ q, each by its own ``rsample()`` in order (so that n draws taken in chunks
    are the same draws whatever the chunks), stacked, and their log q(z_i)."""
    if not isinstance(q, TransformedDistribution) and not hasattr(q, "rsample_and_log_prob"):
        z = torch.stack([q.rsample() for _ in range(n)])
        return z, q.log_prob(z)
    z, log_q = zip(*(scored_sample(q) for _ in range(n)))
    return torch.stack(z), torch.stack(log_q)
