"""Observation models p_theta(x|z) (Appendix C).

A network (``Decoder.net``) emits ``n_params`` parameters per pixel and channel, and a likelihood
turns them into a distribution over images ``[C, H, W]`` whose ``log_prob`` sums over pixels,
normalising constants included. The likelihoods are the options of ``model/likelihood``; those
for 8-bit images (discretized logistic and its mixture) are probabilities of the grid values
k / (bins - 1), and the mixture's weights are per pixel (``channels(C)`` in general); those for
counts (Poisson, negative binomial) are probabilities of non-negative integers, for feature
vectors of counts (``data=array``'s integer vectors). The distributions they return, and their
numerics, are in ``pixel_distributions``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal, constraints
from torch.nn import functional as F

from vae_lightning.args import NonNegativeFloat, PositiveFloat, PositiveInt, Range, checked, within
from vae_lightning.pixel_distributions import (
    ClampedBeta,
    CountNegativeBinomial,
    Grid,
    Image,
    LogRatePoisson,
    PixelBernoulli,
    PixelContinuousBernoulli,
    PixelDiscretizedLogistic,
    PixelDiscretizedLogisticMixture,
    ZeroInflated,
    smooth_floor,
)


def code_length(likelihood: Any, datamodule: Any) -> bool:
    """Whether -log2 p(x) / D is a code length in bits per dimension: the likelihood is a
    probability of discrete pixel values, and the data are those values (binary pixels for a
    Bernoulli likelihood: binarized data, or images that are binary already)."""
    if likelihood.support is constraints.boolean:
        return getattr(datamodule, "binarize", "none") != "none" or binary_pixels(datamodule)
    return likelihood.discrete


def binary_pixels(datamodule: Any) -> bool:
    """Whether ``datamodule`` serves images whose pixels are all 0 or 1 as they are
    (``VAEDataModule.binary_pixels``; False for a data module without that check)."""
    check = getattr(datamodule, "binary_pixels", None)
    return bool(check()) if callable(check) else False


class Likelihood(nn.Module):
    """Maps decoder outputs ``[..., n_params * C, H, W]`` to a distribution over images
    ``[C, H, W]``; ``support`` is the pixel values it is a density or probability on."""

    n_params = 1
    support: constraints.Constraint = constraints.real

    def __init__(self) -> None:  # an explicit signature, so config keys are checked against it
        super().__init__()

    @property
    def discrete(self) -> bool:
        """Whether the likelihood is a probability of discrete values (binary pixels, a grid of
        8-bit levels, counts) rather than a density: only then is -log2 p(x) / D a code length,
        the bits per dimension that results report."""
        return self.support.is_discrete

    @property
    def counts(self) -> bool:
        """Whether the likelihood is a distribution of counts, non-negative integers (the data:
        integer feature vectors), not of pixel values or real numbers."""
        return self.support is constraints.nonnegative_integer

    def channels(self, data_channels: int) -> int:
        """How many output channels the decoder network needs for ``data_channels``."""
        return self.n_params * data_channels

    def forward(self, params: Tensor) -> Distribution:
        if params.dtype != torch.float32:  # under mixed precision: densities in float32
            params = params.float()
        if self.n_params == 1:
            return Image(self.pixel_distribution(params), 3)
        return Image(self.pixel_distribution(*params.unflatten(-3, (self.n_params, -1))
                                             .unbind(-4)), 3)

    def pixel_distribution(self, *params: Tensor) -> Distribution:
        raise NotImplementedError

    def mean_bias(self, mean: Tensor) -> Tensor:
        """The decoder outputs ``[n_params * C, H, W]`` at which p(x|z) has the mean image
        ``mean`` ``[C, H, W]``: the output bias that starts the decoder at the data's mean when
        its last weights are small (``callbacks.OutputBias``). ``NotImplementedError`` for a
        likelihood without such a bias."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Bernoulli MLP decoder (Appendix C.1): log p(x|z) = sum_i x_i log y_i + (1-x_i) log(1-y_i),
    computed from logits. For binary data; on grayscale x it is the unnormalised cross-entropy
    (see the continuous Bernoulli for a proper density on [0, 1])."""

    support = constraints.boolean

    def pixel_distribution(self, logits: Tensor) -> Distribution:
        return PixelBernoulli(logits=logits, validate_args=False)

    def mean_bias(self, mean: Tensor) -> Tensor:
        """logit(mean), the mean clipped to [1e-3, 1 - 1e-3] as in Burda et al.'s code (pixels
        that are always 0 would otherwise get an infinite bias)."""
        return torch.logit(mean.clamp(1e-3, 1 - 1e-3))


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
        log_var = smooth_floor(log_var, self.log_min_var)
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
    C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = L / tanh(L / 2) for logits L, C(1/2) = 2,
    log C computed from L (``pixel_distributions.PixelContinuousBernoulli``: torch's, from
    lambda clamped to [eps, 1 - eps], is too small for |L| > ~16 in float32). Its mean is not
    lambda."""

    support = constraints.unit_interval

    def pixel_distribution(self, logits: Tensor) -> Distribution:
        return PixelContinuousBernoulli(logits=logits, validate_args=False)


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
        return ClampedBeta(F.softplus(a) + 1e-4, F.softplus(b) + 1e-4, self.eps)


# Counts: probabilities of non-negative integers, for feature vectors of counts (data=array's
# integer vectors [N, D], such as a cells x genes table of read counts).


class Counts(Likelihood):
    """A likelihood of counts, optionally zero-inflated (``zero_inflated``: one more output per
    value, the logit g of a gate pi = sigmoid(g) that emits an extra zero, as scVI's ZINB for
    the dropouts of single-cell data: p(0) = pi + (1 - pi) q(0), p(k) = (1 - pi) q(k) for
    k > 0, with q the count distribution; ``pixel_distributions.ZeroInflated``)."""

    support = constraints.nonnegative_integer
    n_count_params = 1  # the count distribution's outputs per value, before the gate's

    def __init__(self, zero_inflated: bool = False) -> None:
        super().__init__()
        self.zero_inflated = zero_inflated
        self.n_params = self.n_count_params + int(zero_inflated)

    def pixel_distribution(self, *params: Tensor) -> Distribution:
        if not self.zero_inflated:
            return self.count_distribution(*params)
        return ZeroInflated(self.count_distribution(*params[:-1]), params[-1])

    def count_distribution(self, *params: Tensor) -> Distribution:
        raise NotImplementedError

    def mean_bias(self, mean: Tensor) -> Tensor:
        """The outputs whose distribution has the mean ``mean`` (floored at 1e-3: a value that
        is always 0 would otherwise get an infinite bias): with the gate, g = 0 (pi = 1/2) and
        the count distribution's mean twice ``mean``, so that (1 - pi) x its mean is ``mean``."""
        mean = mean.clamp_min(1e-3)
        if not self.zero_inflated:
            return self.count_bias(mean)
        return torch.cat([self.count_bias(2 * mean), torch.zeros_like(mean)], dim=-3)

    def count_bias(self, mean: Tensor) -> Tensor:
        """The count distribution's outputs at the mean ``mean`` > 0."""
        raise NotImplementedError


class Poisson(Counts):
    """Poisson decoder for counts: per value a rate lambda = exp(eta), eta the network's output
    (the log link), log p(k) = k eta - lambda - log k!, summed over the vector: a probability,
    so -log2 p(x) / D is a code length in bits per value. Its variance equals its mean; counts
    that vary more (sequencing reads, say) want the negative binomial. ``zero_inflated``: the
    ZIP (``Counts``)."""

    @checked
    def __init__(self, zero_inflated: bool = False) -> None:
        super().__init__(zero_inflated)

    def count_distribution(self, log_rate: Tensor) -> Distribution:
        return LogRatePoisson(log_rate, validate_args=False)

    def count_bias(self, mean: Tensor) -> Tensor:
        return torch.log(mean)


# The largest max_log_theta: theta = e^25 = 7.2e10, where float64's rounding of the log-gamma
# terms (about 1e12) is below 1e-3 nats (NegativeBinomial).
MAX_LOG_THETA = 25.0


class NegativeBinomial(Counts):
    """Negative binomial (gamma-Poisson) decoder for overdispersed counts, in the mean and
    inverse-dispersion parametrisation of scVI (Lopez et al. 2018): per value a mean
    mu = exp(eta_1) and an inverse dispersion theta = exp(eta_2), both from the network (scVI's
    "gene-cell" dispersion), so

        p(k) = Gamma(k + theta) / (Gamma(theta) k!) (theta / (theta + mu))^theta
               (mu / (theta + mu))^k,

    with mean mu and variance mu + mu^2 / theta (theta -> infinity: the Poisson). It is
    torch's NegativeBinomial with total_count = theta and logits = eta_1 - eta_2 (formed from
    the outputs, not from exp and log), its log-probability in closed form through lgamma, in
    float64 (``pixel_distributions.CountNegativeBinomial``). eta_2 is clamped at
    ``max_log_theta`` so that theta stays finite (beyond it the distribution is the Poisson to
    float32's precision). Its largest value is ``MAX_LOG_THETA``: log Gamma(k + theta) and
    log Gamma(theta) grow as theta log theta, and their difference, a few nats, is lost in
    float64's rounding of them beyond it (log p off by 2 nats per value at e^34, by hundreds
    at e^40, positive log-probabilities among them). ``zero_inflated``: scVI's ZINB
    (``Counts``)."""

    n_count_params = 2

    @checked
    def __init__(self, max_log_theta: Annotated[float, Range(gt=0, le=MAX_LOG_THETA)] = 20.0,
                 zero_inflated: bool = False) -> None:
        super().__init__(zero_inflated)
        self.max_log_theta = max_log_theta

    def count_distribution(self, log_mean: Tensor, log_theta: Tensor) -> Distribution:
        log_theta = log_theta.clamp(max=self.max_log_theta)
        return CountNegativeBinomial(log_theta.exp(), logits=log_mean - log_theta,
                                     validate_args=False)

    def count_bias(self, mean: Tensor) -> Tensor:
        """log(mean) for eta_1, and 0 for eta_2: theta = 1 to start, a variance of
        mu + mu^2."""
        return torch.cat([torch.log(mean), torch.zeros_like(mean)], dim=-3)


# 8-bit images: probabilities of the grid values k / (bins - 1), not densities, so the bound is
# in bits per dimension on the 8-bit data (see ``pixel_distributions``).


class DiscretizedLogistic(Likelihood):
    """Discretized logistic (IAF paper; PixelCNN++ with one component) for pixels on the grid
    k / (bins - 1): per pixel and channel a logistic Y with location mu and scale s, and
    P(k) = P(the bin of k holds Y) = sigma((x + h - mu) / s) - sigma((x - h - mu) / s), with
    x = k / (bins - 1) and h = 1 / (2 (bins - 1)) half a bin; the edge bins take the tails,
    P(0) = sigma((h - mu) / s) and P(bins - 1) = 1 - sigma((1 - h - mu) / s). ``log_prob`` is
    log P of the image in nats, summed over pixels: a normalised distribution on the grid.

    Parameters (decoder channels ``[param, channel]``, as every likelihood here): mu = 1/2 + the
    first output, unconstrained (centred on mid-grey; PixelCNN++'s mean on its [-1, 1] scale is
    2 mu - 1); log s = logaddexp(second output, ``log_scale_min``), a smooth floor (PixelCNN++
    clamps at -7 on [-1, 1], i.e. -7.69 on [0, 1]).

    log P is computed in log space, exactly and stably for any parameters: an interior bin is
    log sigma(b) + log sigma(-a) + log(1 - exp(-(b - a))) with a, b the bin's standardised edges
    (from sigma(b) - sigma(a) = (e^b - e^a) / ((1 + e^a)(1 + e^b))), b - a = 1 / ((bins - 1) s)
    formed without cancellation. Nothing underflows, so the midpoint-density fallback of
    PixelCNN++ is not needed (this equals PixelCNN++ where its difference of sigmoids is
    representable, and is exact where it approximates).

    Off the grid, x is scored as its nearest grid value: k = round(clamp(x, 0, 1) (bins - 1)),
    always a finite log-probability. Data scaled by 256 (x = k / 256) want ``bins=257``.

    ``mean`` is the exact E[k] / (bins - 1); ``sample()`` draws Y, clamps it to [0, 1] and
    rounds it to the grid (an exact draw of k / (bins - 1)).
    """

    n_params = 2

    @checked
    def __init__(self, bins: Annotated[int, Range(ge=2)] = 256,
                 log_scale_min: Annotated[float, Range(ge=-30)] = -8.0) -> None:
        super().__init__()
        self.bins, self.log_scale_min = bins, log_scale_min
        self.support = Grid(bins)

    def pixel_distribution(self, loc: Tensor, log_scale: Tensor) -> Distribution:
        return PixelDiscretizedLogistic(0.5 + loc, smooth_floor(log_scale, self.log_scale_min),
                                        self.bins)


class DiscretizedLogisticMixture(Likelihood):
    """Mixture of discretized logistics (PixelCNN++, Salimans et al. 2017): per pixel,
    ``n_components`` components with mixture weights shared across the pixel's channels, each
    component a product over channels of discretized logistics (``DiscretizedLogistic``: same
    bins, parametrisation, floor and off-grid rule). With ``coefficients`` (and C > 1), the
    channels are autoregressive within a component, as PixelCNN++ does for RGB: the location of
    channel c is mu_c + sum_{c' < c} alpha_{c,c'} (x_{c'} - 1/2), alpha = tanh(output), i.e. G
    depends linearly on R, and B on R and G (PixelCNN++'s m + alpha x on its [-1, 1] scale).
    log p(x) = sum_pixels log sum_m pi_m prod_c P_m(x_c | x_<c), in nats.

    Decoder output layout ``[..., channels(C), H, W]``, M = ``n_components``, P = C (C - 1) / 2
    coefficients (0 without ``coefficients``): channels [0, M) are the mixture logits; then rows
    of M channels (row r, component m at channel M + r M + m): the C location rows (channels in
    order), the C log-scale rows, and the P coefficient rows in the order (1, 0), (2, 0), (2, 1),
    ... (for RGB: G<-R, B<-R, B<-G). So ``channels(3)`` = M (1 + 3 * 3) = 10 M (logits, means,
    log-scales, coefficients), ``channels(1)`` = 3 M, and with M = 1 the rows after the logit are
    ``DiscretizedLogistic``'s layout.

    ``mean``: the mixture of the components' means, sum_m pi_m E_m[x_c]. For channels without
    coefficients (all of them for C = 1 or ``coefficients=false``) it is exact; with
    coefficients it is an approximation for c > 0: each component's conditioning channels are
    replaced by their component means, E_m[x_c] ~ E[x_c | x_<c = E_m[x_<c]] (exact where the
    clamp to [0, 1] is inactive, since the location is linear in x_<c). ``sample()``: a
    component per pixel, then each channel in order, drawn from its logistic with the
    coefficients applied to the channels already drawn (on the grid), clamped to [0, 1] and
    rounded to the grid: an exact draw from the model.
    """

    @checked
    def __init__(self, n_components: PositiveInt = 10, bins: Annotated[int, Range(ge=2)] = 256,
                 log_scale_min: Annotated[float, Range(ge=-30)] = -8.0,
                 coefficients: bool = True) -> None:
        super().__init__()
        self.n_components, self.bins, self.log_scale_min = n_components, bins, log_scale_min
        self.coefficients = coefficients
        self.support = Grid(bins)

    def _n_coefficients(self, data_channels: int) -> int:
        return data_channels * (data_channels - 1) // 2 if self.coefficients else 0

    def channels(self, data_channels: int) -> int:
        return self.n_components * (1 + 2 * data_channels + self._n_coefficients(data_channels))

    def data_channels(self, channels: int) -> int:
        """The C with ``channels(C) == channels``."""
        for c in range(1, channels + 1):
            if self.channels(c) == channels:
                return c
        raise ValueError(f"{channels} decoder output channels are channels(C) for no C "
                         f"({type(self).__name__}, n_components={self.n_components}).")

    def forward(self, params: Tensor) -> Distribution:
        return self.distribution(params.float())

    def distribution(self, params: Tensor) -> Distribution:
        """``forward`` without the cast to float32 (e.g. float64 for tests)."""
        m, c = self.n_components, self.data_channels(params.shape[-3])
        logits = params[..., :m, :, :]
        rows = params[..., m:, :, :].unflatten(-3, (-1, m))  # [..., 2C + P, M, H, W]
        return PixelDiscretizedLogisticMixture(
            logits, 0.5 + rows[..., :c, :, :, :],
            smooth_floor(rows[..., c:2 * c, :, :, :], self.log_scale_min),
            torch.tanh(rows[..., 2 * c:, :, :, :]), self.bins)


class Decoder(nn.Module):
    """p_theta(x|z): a network from z (``latent``) to the likelihood's parameters for every pixel
    of an image of ``data_shape`` ``[C, H, W]``. With stochastic layers (``posteriors.hierarchy``)
    the decoder reads the bottom layer only, the first ``latent`` units of z. ``condition``:
    p(x|z, y), the network given a condition y as well (``conditional.Conditioned``, called
    with ``net``)."""

    @checked
    def __init__(
        self,
        net: Callable[..., nn.Module],
        likelihood: Likelihood,
        data_shape: Sequence[PositiveInt],
        latent: PositiveInt,
        condition: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.likelihood, self.latent = likelihood, latent
        channels, *size = data_shape
        build = net if condition is None else functools.partial(condition, net=net)
        self.net = within("net", lambda: build((latent,), (likelihood.channels(channels), *size)))

    def forward(self, z: Tensor) -> Distribution:
        if z.shape[-1] != self.latent:  # z = [z_1, ..., z_L]: p(x|z) = p(x|z_1)
            z = z[..., :self.latent]
        return self.likelihood(self.net(z))
