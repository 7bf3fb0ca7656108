"""The recognition model q_phi(z|x) (Sec. 2.4): ``Encoder`` is a network and a posterior family;
the network's output parameters the family's distribution over the whole latent vector, so that
z = g_phi(eps, x) and gradients flow through ``rsample``. The families are the options of
``model/posterior``: the location-scale families here (one distribution per latent dimension,
from a location and a log-variance), and flows in their own modules of this package (e.g.
``posteriors.planar``).

A family keeps the contract of ``parts.Family``: ``n_params(latent)`` network outputs,
``__call__(params)`` the distribution, ``location(q)`` the point that stands for q, and the
``features`` it offers (``parts.FEATURES``), against which the objective and the prior are checked
when the model is composed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch import distributions as D
from torch.distributions import Distribution, Independent
from torch.nn import functional as F

from vae_lightning.args import PositiveFloat, PositiveInt, checked, within

# What q.mean says where q has no mean in closed form (flows, stochastic layers): torch's bare
# NotImplementedError said nothing of what to use.
NO_MEAN = ("this q(z|x) has no mean in closed form; model.encoder.location(q) gives the point "
           "that stands for it (what reconstruct decodes)")


class Family:
    """A posterior family (``parts.Family``): ``n_params(latent)`` network outputs per data point
    parameterize ``__call__(params)``, q(z|x) over the ``latent`` dimensions (event shape
    ``[latent]``); ``location(q)`` is its mean unless a family says otherwise."""

    features: frozenset[str] = frozenset()
    # The sizes of its stochastic layers, z_1 first (posteriors.hierarchy); None: one layer.
    layers: list[int] | None = None
    # Why its draws cannot be captured in a CUDA graph (``model.cuda_graph``), or None.
    uncapturable: str | None = None

    def n_params(self, latent: int) -> int:
        raise NotImplementedError

    def __call__(self, params: Tensor) -> Distribution:
        raise NotImplementedError

    def location(self, q: Distribution) -> Tensor:
        return q.mean

    def bind(self, prior: nn.Module) -> None:
        """Called once with the model's prior p(z); a family whose q is built with the prior's
        networks keeps it (the Ladder VAE's top-down inference), and refuses a prior it cannot
        work with (``ValueError``, one line)."""

    def stddev(self, q: Distribution) -> Tensor | None:
        """q's standard deviation per dimension, or None where it has no closed form."""
        try:
            return q.stddev
        except NotImplementedError:  # torch's answer for a flow (TransformedDistribution)
            return None

    def informative(self) -> Family:
        """The family of the part of z through which z depends on x, from the same parameters:
        I_q(x; z) is that part's (``log_likelihood.mutual_information``). All of z, but for a
        chain whose upper layers depend on x only through its first (``hierarchy.BottomUp``)."""
        return self

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not k.startswith("_")
                 and k not in ("features", "scale_factor")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class LocationScale(Family):
    """One distribution per latent dimension from a location and a log-variance (2 x latent
    network outputs); the scale is set so that Var[z_j] = exp(log_var_j) where the variance is
    finite (``distribution``). A product over dimensions with a density everywhere, so KL(q || p)
    is analytic where torch.distributions' registry has the pair."""

    features = frozenset({"rsample", "density", "factorized", "finite_variance"})
    # Smooth bounds on log_var: identity to within 1e-3 on [-23, 13], never outside [-30, 20], so
    # a diverging step cannot drive sigma to 0 or infinity (and the KL to infinity).
    LOG_VAR_MIN, LOG_VAR_MAX = -30.0, 20.0

    def n_params(self, latent: int) -> int:
        return 2 * latent

    def __call__(self, params: Tensor) -> Distribution:
        loc, log_var = params.chunk(2, dim=-1)
        log_var = self.LOG_VAR_MIN + F.softplus(log_var - self.LOG_VAR_MIN)
        log_var = self.LOG_VAR_MAX - F.softplus(self.LOG_VAR_MAX - log_var)
        return Independent(self.distribution(loc, log_var), 1)

    def distribution(self, loc: Tensor, log_var: Tensor) -> Distribution:
        """The per-dimension distribution with location ``loc`` and variance exp(log_var)."""
        raise NotImplementedError


class Gaussian(LocationScale):
    """q(z|x) = N(mu, diag(sigma^2)), z = mu + sigma * eps with eps ~ N(0, I) (Sec. 2.4, eq. 10)."""

    def distribution(self, loc: Tensor, log_var: Tensor) -> Distribution:
        return D.Normal(loc, torch.exp(0.5 * log_var), validate_args=False)


class Laplace(LocationScale):
    """q(z|x) = Laplace(mu, b) per dimension, z = mu + b * eps with eps ~ Laplace(0, 1);
    b = sigma / sqrt(2), so that Var[z] = 2 b^2 = sigma^2. Heavier tails than the Gaussian."""

    def distribution(self, loc: Tensor, log_var: Tensor) -> Distribution:
        return D.Laplace(loc, torch.exp(0.5 * log_var) / math.sqrt(2.0), validate_args=False)


class StudentT(LocationScale):
    """q(z|x) = StudentT(df, mu, s) per dimension, z = mu + s * eps with eps ~ t_df (reparameterized
    through torch's Gamma ``rsample``). For df > 2, s = sigma sqrt((df - 2) / df), so that
    Var[z] = s^2 df / (df - 2) = exp(log_var); for df <= 2 the variance is infinite and s = sigma.
    Heavy tails. With df <= 2, E_q[z^2] is infinite, so KL(q || p) is infinite under a prior with
    Gaussian tails (log p(z) is quadratic in z): such pairs are refused when the model is composed
    (no ``finite_variance``), and df <= 2 is for the VampPrior, whose components are this family.
    For df <= 1 (df = 1: the Cauchy) q has no mean: its location stands for it (``location``)."""

    @checked
    def __init__(self, df: PositiveFloat = 5.0) -> None:
        self.df = df
        self.scale_factor = math.sqrt((df - 2.0) / df) if df > 2 else 1.0
        if df <= 2:
            self.features = LocationScale.features - {"finite_variance"}

    def distribution(self, loc: Tensor, log_var: Tensor) -> Distribution:
        scale = self.scale_factor * torch.exp(0.5 * log_var)
        return D.StudentT(self.df, loc, scale, validate_args=False)

    def location(self, q: Distribution) -> Tensor:
        return q.mean if self.df > 1 else q.base_dist.loc


def refuse_incomplete(family: object) -> None:
    """A family of one's own that lacks what the model calls (``parts.Family``), refused when
    the encoder is built, in one line (it surfaced as a bare error where it was first called)."""
    missing = [name for name in ("n_params", "__call__", "location", "bind", "informative",
                                 "features") if not hasattr(family, name)]
    missing += [name for name in ("n_params", "__call__")
                if getattr(type(family), name, None) is getattr(Family, name)]
    if missing:
        raise ValueError(
            f"model.encoder.posterior: {type(family).__qualname__} does not define "
            f"{', '.join(dict.fromkeys(missing))}: a posterior family subclasses "
            "vae_lightning.posteriors.Family (which gives bind, informative, location and "
            "features) and defines n_params(latent) and __call__(params), q(z|x) over z")
    if getattr(type(family), "location", None) is not Family.location:
        return
    # Its location is q's mean: where q has none in closed form (a flow's TransformedDistribution)
    # the first to ask (the figures, vae-encode) failed after training, with a traceback.
    try:
        q = family(torch.zeros(1, family.n_params(1)))
    except Exception:  # noqa: BLE001 - a q it cannot build alone (bound to a prior): untested
        return
    try:
        _ = q.mean
    except NotImplementedError:
        raise ValueError(
            f"model.encoder.posterior: {type(family).__qualname__}'s q(z|x) "
            f"({type(q).__name__}) has no mean in closed form, which Family.location returns: "
            "define location(q), the point that stands for q (e.g. its flow applied to the base "
            "distribution's mean)") from None


class Encoder(nn.Module):
    """q_phi(z|x): ``net`` (called with the data shape and the family's number of outputs) emits
    the parameters of ``posterior``'s distribution over ``latent`` dimensions: with the default
    Gaussian family, the paper's Gaussian MLP encoder (Appendix C.2). Its outputs are cast to
    float32, so densities and KLs stay exact under mixed precision. ``condition``: q(z|x, y),
    the network given a condition y as well (``conditional.Conditioned``, called with ``net``),
    so that ``net`` keeps its keys whether or not the model is conditional."""

    @checked
    def __init__(
        self,
        net: Callable[..., nn.Module],
        posterior: Family,
        data_shape: Sequence[PositiveInt],
        latent: PositiveInt,
        condition: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.posterior, self.latent = posterior, latent
        refuse_incomplete(posterior)
        build = net if condition is None else functools.partial(condition, net=net)
        self.net = within("net", lambda: build(tuple(data_shape), (posterior.n_params(latent),)))
        if isinstance(posterior, nn.Module):  # a family with parameters of its own
            self.add_module("family", posterior)

    def params(self, x: Tensor) -> Tensor:
        """The network's output for ``x``: the family's parameters, ``[..., n_params]``."""
        return self.net(x).float()

    def forward(self, x: Tensor) -> Distribution:
        return self.posterior(self.params(x))

    def location(self, q: Distribution) -> Tensor:
        """The point that stands for q(z|x) (active units, ``predict_step``, reconstructions):
        its mean, or the family's location where the mean does not exist or is intractable."""
        return self.posterior.location(q)
