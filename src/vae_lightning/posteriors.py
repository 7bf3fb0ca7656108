"""Recognition models q_phi(z|x) (Sec. 2.4): an MLP computes the parameters of a reparameterizable
distribution over z, so that z = g_phi(eps, x) and gradients flow through ``rsample``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Laplace, Normal, StudentT
from torch.nn import functional as F

from vae_lightning.nets import MLP


class Posterior(nn.Module):
    """A location-scale family q_phi(z|x) over ``latent`` independent dimensions.

    The MLP emits a location and a log-variance per latent dimension (the paper's Gaussian MLP
    encoder, Appendix C.2); subclasses turn them into a ``torch.distributions`` family.
    Parameters are cast to float32 so that densities and KLs stay exact under mixed precision.
    The scale is set from the log-variance so that Var[z_j] = exp(log_var_j) where it is finite.

    ``has_analytic_kl`` says whether torch.distributions has KL(q || N(0, I)) in closed form.
    """

    has_analytic_kl = False

    def __init__(
        self,
        in_features: int,
        latent: int,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.latent = latent
        self.net = MLP(in_features, hidden, 2 * latent, activation, init_std)

    # Smooth bounds on log_var: identity to within 1e-3 on [-23, 13], never outside [-30, 20], so a
    # diverging step cannot drive sigma to 0 or infinity (and the KL to infinity).
    LOG_VAR_MIN, LOG_VAR_MAX = -30.0, 20.0

    def forward(self, x: Tensor) -> Distribution:
        loc, log_var = self.net(x).float().chunk(2, dim=-1)
        log_var = self.LOG_VAR_MIN + F.softplus(log_var - self.LOG_VAR_MIN)
        log_var = self.LOG_VAR_MAX - F.softplus(self.LOG_VAR_MAX - log_var)
        return Independent(self.family(loc, log_var), 1)

    def family(self, loc: Tensor, log_var: Tensor) -> Distribution:
        raise NotImplementedError


class GaussianPosterior(Posterior):
    """q(z|x) = N(mu, diag(sigma^2)), z = mu + sigma * eps with eps ~ N(0, I) (Sec. 2.4, eq. 10)."""

    has_analytic_kl = True

    def family(self, loc: Tensor, log_var: Tensor) -> Distribution:
        return Normal(loc, torch.exp(0.5 * log_var), validate_args=False)


class LaplacePosterior(Posterior):
    """q(z|x) = Laplace(mu, b) per dimension, z = mu + b * eps with eps ~ Laplace(0, 1);
    b = sigma / sqrt(2), so that Var[z] = 2 b^2 = sigma^2 = exp(log_var). Heavier tails than the
    Gaussian; KL to N(0, I) is analytic."""

    has_analytic_kl = True

    def family(self, loc: Tensor, log_var: Tensor) -> Distribution:
        return Laplace(loc, torch.exp(0.5 * log_var) / math.sqrt(2.0), validate_args=False)


class StudentTPosterior(Posterior):
    """q(z|x) = StudentT(df, mu, s) per dimension, z = mu + s * eps with eps ~ t_df (reparameterized
    through torch's Gamma ``rsample``). For df > 2, s = sigma sqrt((df - 2) / df), so that
    Var[z] = s^2 df / (df - 2) = exp(log_var); for df <= 2 the variance is infinite and s = sigma.
    Heavy tails (df = 1 is the Cauchy); no analytic KL, so use model.kl=mc."""

    def __init__(self, *args, df: float = 5.0, **kwargs) -> None:
        if not df > 0:
            raise ValueError(f"posterior.df={df} must be > 0 (the degrees of freedom).")
        super().__init__(*args, **kwargs)
        self.df = df
        self.scale_factor = math.sqrt((df - 2.0) / df) if df > 2 else 1.0

    def family(self, loc: Tensor, log_var: Tensor) -> Distribution:
        scale = self.scale_factor * torch.exp(0.5 * log_var)
        return StudentT(self.df, loc, scale, validate_args=False)
