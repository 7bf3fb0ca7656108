"""Priors p(z) over the latent space."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal


class Prior(nn.Module):
    """A prior p(z): exposes ``distribution()``, ``log_prob(z)`` and ``sample(n)``.

    ``has_analytic_kl`` says whether KL(q || p) has a closed form for a Gaussian q (estimator B,
    eq. 7); otherwise the objective uses the Monte-Carlo KL (estimator A, eq. 6).
    """

    has_analytic_kl = False

    def __init__(self, latent: int) -> None:
        super().__init__()
        self.latent = latent

    def distribution(self) -> Distribution:
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int) -> Tensor:
        return self.distribution().sample((n,))


class StandardNormal(Prior):
    """p(z) = N(0, I), the paper's prior; KL to a diagonal Gaussian is analytic (Appendix B)."""

    has_analytic_kl = True

    def __init__(self, latent: int) -> None:
        super().__init__(latent)
        self.register_buffer("loc", torch.zeros(latent))
        self.register_buffer("scale", torch.ones(latent))

    def distribution(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)
