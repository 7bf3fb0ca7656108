"""Observation models p_theta(x|z) (Appendix C).

An MLP decoder emits per-pixel parameters and a likelihood turns them into a distribution whose
``log_prob`` sums over pixels, normalising constants included."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli as _Bernoulli
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.nets import MLP


class Likelihood(nn.Module):
    """Maps decoder outputs ``[..., n_params * D]`` to a distribution over ``D`` pixels."""

    n_params = 1

    def forward(self, params: Tensor) -> Distribution:
        return Independent(self.pixel_distribution(*params.float().chunk(self.n_params, -1)), 1)

    def pixel_distribution(self, *params: Tensor) -> Distribution:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Bernoulli MLP decoder (Appendix C.1): log p(x|z) = sum_i x_i log y_i + (1-x_i) log(1-y_i),
    computed from logits. For binary data; on grayscale x it is the unnormalised cross-entropy
    (see the continuous Bernoulli for a proper density on [0, 1])."""

    def pixel_distribution(self, logits: Tensor) -> Distribution:
        return _Bernoulli(logits=logits, validate_args=False)


class Gaussian(Likelihood):
    """Gaussian MLP decoder (Appendix C.2): mu = W4 h + b4, log sigma^2 = W5 h + b5, with
    log N(x; mu, sigma^2) including -1/2 log(2 pi) per pixel.

    ``mean_activation='sigmoid'`` keeps mu in (0, 1) as the authors do for Frey Face.
    ``min_var`` is a smooth floor on the variance, sigma^2 = min_var + exp(W5 h + b5), so the
    density cannot grow without bound on pixels that never vary.
    """

    n_params = 2

    def __init__(self, mean_activation: str = "sigmoid", min_var: float = 1e-4) -> None:
        super().__init__()
        if mean_activation not in ("sigmoid", "identity"):
            raise ValueError(
                f"likelihood.mean_activation={mean_activation!r} is not supported; "
                "accepted: 'sigmoid', 'identity'."
            )
        if not min_var >= 0:
            raise ValueError(f"likelihood.min_var={min_var} must be >= 0.")
        self.mean_activation = mean_activation
        self.log_min_var = math.log(min_var) if min_var > 0 else -math.inf

    def pixel_distribution(self, mean: Tensor, log_var: Tensor) -> Distribution:
        if self.mean_activation == "sigmoid":
            mean = torch.sigmoid(mean)
        log_var = torch.logaddexp(log_var, torch.full_like(log_var, self.log_min_var))
        return Normal(mean, torch.exp(0.5 * log_var), validate_args=False)


class Decoder(nn.Module):
    """p_theta(x|z): an MLP from z to the likelihood's parameters for every pixel."""

    def __init__(
        self,
        latent: int,
        out_features: int,
        likelihood: Likelihood,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.net = MLP(latent, hidden, out_features * likelihood.n_params, activation, init_std)

    def forward(self, z: Tensor) -> Distribution:
        return self.likelihood(self.net(z))
