"""Observation models p_theta(x|z) (Appendix C).

A network (``Decoder.net``) emits ``n_params`` parameters per pixel and channel, and a likelihood
turns them into a distribution over images ``[C, H, W]`` whose ``log_prob`` sums over pixels,
normalising constants included. The likelihoods are the options of ``model/likelihood``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli as _Bernoulli
from torch.distributions import Beta as _Beta
from torch.distributions import ContinuousBernoulli as _ContinuousBernoulli
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.nn import functional as F

from vae_lightning.args import NonNegativeFloat, PositiveFloat, PositiveInt, Range, checked


class Likelihood(nn.Module):
    """Maps decoder outputs ``[..., n_params * C, H, W]`` to a distribution over images
    ``[C, H, W]``; ``support`` is the pixel values it is a density or probability on."""

    n_params = 1
    support: constraints.Constraint = constraints.real

    def __init__(self) -> None:  # an explicit signature, so config keys are checked against it
        super().__init__()

    def channels(self, data_channels: int) -> int:
        """How many output channels the decoder network needs for ``data_channels``."""
        return self.n_params * data_channels

    def forward(self, params: Tensor) -> Distribution:
        params = params.float().unflatten(-3, (self.n_params, -1)).unbind(-4)
        return Independent(self.pixel_distribution(*params), 3)

    def pixel_distribution(self, *params: Tensor) -> Distribution:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Bernoulli MLP decoder (Appendix C.1): log p(x|z) = sum_i x_i log y_i + (1-x_i) log(1-y_i),
    computed from logits. For binary data; on grayscale x it is the unnormalised cross-entropy
    (see the continuous Bernoulli for a proper density on [0, 1])."""

    support = constraints.boolean

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

    @checked
    def __init__(self, mean_activation: Literal["sigmoid", "identity"] = "sigmoid",
                 min_var: NonNegativeFloat = 1e-4) -> None:
        super().__init__()
        self.mean_activation = mean_activation
        self.log_min_var = math.log(min_var) if min_var > 0 else -math.inf

    def pixel_distribution(self, mean: Tensor, log_var: Tensor) -> Distribution:
        if self.mean_activation == "sigmoid":
            mean = torch.sigmoid(mean)
        log_var = torch.logaddexp(log_var, log_var.new_tensor(self.log_min_var))
        return Normal(mean, torch.exp(0.5 * log_var), validate_args=False)


class GaussianFixed(Gaussian):
    """Gaussian decoder with one fixed standard deviation ``sigma`` for every pixel:
    log p(x|z) = sum_i [-1/2 log(2 pi) - log sigma - (x_i - mu_i)^2 / (2 sigma^2)].

    Up to constants this is the squared error weighted by 1 / (2 sigma^2): the classic
    "MSE autoencoder" VAE, with sigma setting the balance between reconstruction and KL.
    """

    n_params = 1

    @checked
    def __init__(self, sigma: PositiveFloat = 0.1,
                 mean_activation: Literal["sigmoid", "identity"] = "sigmoid") -> None:
        super().__init__(mean_activation, min_var=0.0)
        self.log_var = 2.0 * math.log(sigma)

    def pixel_distribution(self, mean: Tensor) -> Distribution:
        return super().pixel_distribution(mean, torch.full_like(mean, self.log_var))


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli on logits (Loaiza-Ganem & Cunningham 2019), the proper density for
    x in [0, 1]: p(x|lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x) with
    C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda), C(1/2) = 2. torch evaluates log C by a
    Taylor expansion near lambda = 1/2, where the closed form is 0/0. Its mean is not lambda."""

    support = constraints.unit_interval

    def pixel_distribution(self, logits: Tensor) -> Distribution:
        return _ContinuousBernoulli(logits=logits, validate_args=False)


class Beta(Likelihood):
    """Beta decoder for continuous x in [0, 1] (e.g. Frey Face):
    log p(x|z) = sum_i [(a_i - 1) log x_i + (b_i - 1) log(1 - x_i) - log B(a_i, b_i)], with
    a, b = softplus(decoder outputs) + 1e-4. Unlike the Gaussian it lives on (0, 1) and can be
    skewed or U-shaped (pixels piled at black or white); its mean is a / (a + b).

    The density is infinite or zero at x = 0 and 1, so pixels are clamped into [eps, 1 - eps]
    before scoring: the score of a saturated pixel is the density at eps (or 1 - eps).
    """

    n_params = 2
    support = constraints.unit_interval

    @checked
    def __init__(self, eps: Annotated[float, Range(gt=0, lt=0.5)] = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def pixel_distribution(self, a: Tensor, b: Tensor) -> Distribution:
        return _ClampedBeta(F.softplus(a) + 1e-4, F.softplus(b) + 1e-4, self.eps)


class _ClampedBeta(_Beta):
    """A Beta whose ``log_prob`` clamps x into [eps, 1 - eps] (see ``Beta``)."""

    def __init__(self, a: Tensor, b: Tensor, eps: float) -> None:
        super().__init__(a, b, validate_args=False)
        self.eps = eps

    def log_prob(self, value: Tensor) -> Tensor:
        return super().log_prob(value.clamp(self.eps, 1.0 - self.eps))


class Decoder(nn.Module):
    """p_theta(x|z): a network from z (``latent``) to the likelihood's parameters for every pixel
    of an image of ``data_shape`` ``[C, H, W]``."""

    @checked
    def __init__(
        self,
        net: Callable[..., nn.Module],
        likelihood: Likelihood,
        data_shape: Sequence[PositiveInt],
        latent: PositiveInt,
    ) -> None:
        super().__init__()
        self.likelihood = likelihood
        channels, *size = data_shape
        self.net = net((latent,), (likelihood.channels(channels), *size))

    def forward(self, z: Tensor) -> Distribution:
        return self.likelihood(self.net(z))
