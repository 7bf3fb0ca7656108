"""Recognition models q_phi(z|x) (Sec. 2.4): an MLP computes the parameters of a reparameterizable
distribution over z, so that z = g_phi(eps, x) and gradients flow through ``rsample``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.nets import MLP


class Posterior(nn.Module):
    """A location-scale family q_phi(z|x) over ``latent`` independent dimensions.

    The MLP emits a location and a log-variance per latent dimension (the paper's Gaussian MLP
    encoder, Appendix C.2); subclasses turn them into a ``torch.distributions`` family.
    Parameters are cast to float32 so that densities and KLs stay exact under mixed precision.
    """

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

    def forward(self, x: Tensor) -> Distribution:
        loc, log_var = self.net(x).float().chunk(2, dim=-1)
        return Independent(self.family(loc, log_var), 1)

    def family(self, loc: Tensor, log_var: Tensor) -> Distribution:
        raise NotImplementedError


class GaussianPosterior(Posterior):
    """q(z|x) = N(mu, diag(sigma^2)), z = mu + sigma * eps with eps ~ N(0, I) (Sec. 2.4, eq. 10)."""

    def family(self, loc: Tensor, log_var: Tensor) -> Distribution:
        return Normal(loc, torch.exp(0.5 * log_var), validate_args=False)
