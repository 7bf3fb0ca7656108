"""The recognition model q_phi(z|x) (Sec. 2.4): a network computes the location and log-variance
of a reparameterizable family over z, so that z = g_phi(eps, x) and gradients flow through
``rsample``. ``Encoder`` is the network and the family together; the families are the options of
``model/posterior``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch import distributions as D
from torch.distributions import Distribution, Independent
from torch.nn import functional as F

from vae_lightning.args import PositiveFloat, PositiveInt, checked, within


class Family:
    """A location-scale family per latent dimension, from a location and a log-variance; the
    scale is set so that Var[z_j] = exp(log_var_j) where the variance is finite.
    ``finite_variance`` says whether E_q[z^2] is finite: a prior with Gaussian tails needs it
    for a finite KL (``priors.Prior.bind``)."""

    finite_variance = True

    def __call__(self, loc: Tensor, log_var: Tensor) -> Distribution:
        raise NotImplementedError


class Gaussian(Family):
    """q(z|x) = N(mu, diag(sigma^2)), z = mu + sigma * eps with eps ~ N(0, I) (Sec. 2.4, eq. 10)."""

    def __call__(self, loc: Tensor, log_var: Tensor) -> Distribution:
        return D.Normal(loc, torch.exp(0.5 * log_var), validate_args=False)


class Laplace(Family):
    """q(z|x) = Laplace(mu, b) per dimension, z = mu + b * eps with eps ~ Laplace(0, 1);
    b = sigma / sqrt(2), so that Var[z] = 2 b^2 = sigma^2. Heavier tails than the Gaussian."""

    def __call__(self, loc: Tensor, log_var: Tensor) -> Distribution:
        return D.Laplace(loc, torch.exp(0.5 * log_var) / math.sqrt(2.0), validate_args=False)


class StudentT(Family):
    """q(z|x) = StudentT(df, mu, s) per dimension, z = mu + s * eps with eps ~ t_df (reparameterized
    through torch's Gamma ``rsample``). For df > 2, s = sigma sqrt((df - 2) / df), so that
    Var[z] = s^2 df / (df - 2) = exp(log_var); for df <= 2 the variance is infinite and s = sigma.
    Heavy tails. With df <= 2, E_q[z^2] is infinite, so KL(q || p) is infinite under a prior with
    Gaussian tails (log p(z) is quadratic in z): such pairs are refused, and df <= 2 is for the
    VampPrior, whose components are this family. For df <= 1 (df = 1: the Cauchy) q has no mean:
    its location stands for it (``location``)."""

    @checked
    def __init__(self, df: PositiveFloat = 5.0) -> None:
        self.df = df
        self.scale_factor = math.sqrt((df - 2.0) / df) if df > 2 else 1.0
        self.finite_variance = df > 2

    def __call__(self, loc: Tensor, log_var: Tensor) -> Distribution:
        scale = self.scale_factor * torch.exp(0.5 * log_var)
        return D.StudentT(self.df, loc, scale, validate_args=False)


class Encoder(nn.Module):
    """q_phi(z|x) over ``latent`` independent dimensions: ``net`` (called with the data shape and
    2 x latent outputs) emits a location and a log-variance per dimension, the paper's Gaussian
    MLP encoder (Appendix C.2) with the default family; ``posterior`` turns them into a
    distribution. Its parameters are float32, so densities and KLs stay exact under mixed
    precision."""

    # Smooth bounds on log_var: identity to within 1e-3 on [-23, 13], never outside [-30, 20], so a
    # diverging step cannot drive sigma to 0 or infinity (and the KL to infinity).
    LOG_VAR_MIN, LOG_VAR_MAX = -30.0, 20.0

    @checked
    def __init__(
        self,
        net: Callable[..., nn.Module],
        posterior: Family,
        data_shape: Sequence[PositiveInt],
        latent: PositiveInt,
    ) -> None:
        super().__init__()
        self.posterior = posterior
        self.net = within("net", lambda: net(tuple(data_shape), (2 * latent,)))

    def forward(self, x: Tensor) -> Distribution:
        loc, log_var = self.net(x).float().chunk(2, dim=-1)
        log_var = self.LOG_VAR_MIN + F.softplus(log_var - self.LOG_VAR_MIN)
        log_var = self.LOG_VAR_MAX - F.softplus(self.LOG_VAR_MAX - log_var)
        return Independent(self.posterior(loc, log_var), 1)


def location(q: Distribution) -> Tensor:
    """The point of q(z|x) that stands for it (the active-unit count, ``predict_step``,
    reconstructions): its mean, or its location where the family has no mean (a Student-t
    with df <= 1)."""
    mean = q.mean
    base = q.base_dist if isinstance(q, Independent) else q
    loc = getattr(base, "loc", None)
    return loc if loc is not None and not torch.isfinite(mean).all() else mean
