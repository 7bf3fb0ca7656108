"""Observation models p_theta(x|z) (Appendix C).

A network (``Decoder.net``) emits ``n_params`` parameters per pixel and channel, and a likelihood
turns them into a distribution over images ``[C, H, W]`` whose ``log_prob`` sums over pixels,
normalising constants included. The likelihoods are the options of ``model/likelihood``; those
for 8-bit images (discretized logistic and its mixture) are probabilities of the grid values
k / (bins - 1), and the mixture's weights are per pixel (``channels(C)`` in general)."""

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

from vae_lightning.args import NonNegativeFloat, PositiveFloat, PositiveInt, Range, checked, within


class Likelihood(nn.Module):
    """Maps decoder outputs ``[..., n_params * C, H, W]`` to a distribution over images
    ``[C, H, W]``; ``support`` is the pixel values it is a density or probability on."""

    n_params = 1
    support: constraints.Constraint = constraints.real

    def __init__(self) -> None:  # an explicit signature, so config keys are checked against it
        super().__init__()

    @property
    def discrete(self) -> bool:
        """Whether the likelihood is a probability of discrete pixel values (binary, or a grid
        of 8-bit levels) rather than a density: only then is -log2 p(x) / D a code length, the
        bits per dimension that results report."""
        return self.support is constraints.boolean or isinstance(self.support, Grid)

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


class Image(Independent):
    """The pixels of an image as one event (``Independent`` over ``[C, H, W]``); its
    ``log_prob`` sums the pixels' log-probabilities with the sum taken before any sign flip when
    the pixel distribution gives ``summed_log_prob`` (one negation per image, not per pixel: the
    same numbers, since a sum of negatives is the negative of the sum)."""

    def log_prob(self, value: Tensor) -> Tensor:
        summed = getattr(self.base_dist, "summed_log_prob", None)
        if summed is None:
            return super().log_prob(value)
        return summed(value, tuple(range(-self.reinterpreted_batch_ndims, 0)))


class _PixelBernoulli(_Bernoulli):
    """torch's Bernoulli on logits, with log p(x) summed over ``dims`` before its sign flips:
    log p(x) = -sum BCE-with-logits(logits, x)."""

    def summed_log_prob(self, value: Tensor, dims: tuple[int, ...]) -> Tensor:
        logits = self.logits
        if value.shape != logits.shape:  # samples of z in front: a view, no copy
            value = value.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(dims)


class Bernoulli(Likelihood):
    """Bernoulli MLP decoder (Appendix C.1): log p(x|z) = sum_i x_i log y_i + (1-x_i) log(1-y_i),
    computed from logits. For binary data; on grayscale x it is the unnormalised cross-entropy
    (see the continuous Bernoulli for a proper density on [0, 1])."""

    support = constraints.boolean

    def pixel_distribution(self, logits: Tensor) -> Distribution:
        return _PixelBernoulli(logits=logits, validate_args=False)

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


# ------------------------------------------------------------------------------ 8-bit images
# The likelihoods below are probabilities of quantized pixels, not densities: an 8-bit value k
# arrives as x = k / 255 and is scored as the probability of its bin (PixelCNN++, Salimans et al.
# 2017; the IAF paper, Kingma et al. 2016), so -log p(x) / (D ln 2) is bits per dimension on the
# 8-bit data with no dequantization noise. Location and scale are on the [0, 1] scale of x.


class Grid(constraints.Constraint):
    """The values k / (bins - 1), k = 0, ..., bins - 1 (8-bit pixels k / 255 for bins = 256)."""

    is_discrete = True
    event_dim = 0

    def __init__(self, bins: int) -> None:
        self.bins = bins
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        k = value * (self.bins - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() <= 1e-3)

    def __repr__(self) -> str:
        return f"Grid(bins={self.bins})"


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
        return _DiscretizedLogistic(0.5 + loc, _floored(log_scale, self.log_scale_min), self.bins)


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
        return _DiscretizedLogisticMixture(
            logits, 0.5 + rows[..., :c, :, :, :],
            _floored(rows[..., c:2 * c, :, :, :], self.log_scale_min),
            torch.tanh(rows[..., 2 * c:, :, :, :]), self.bins)


def _floored(log_scale: Tensor, log_scale_min: float) -> Tensor:
    """log(exp(log_scale_min) + exp(log_scale)): a smooth floor, with gradients below it."""
    return torch.logaddexp(log_scale, log_scale.new_tensor(log_scale_min))


def _bin_index(x: Tensor, bins: int) -> Tensor:
    """k of the grid value nearest x (as a float): x clamped to [0, 1] first."""
    return torch.round(x.clamp(0.0, 1.0) * (bins - 1))


def _log1mexp(log_d: Tensor) -> Tensor:
    """log(1 - exp(-d)) for d = exp(log_d) > 0, accurate for every d (Maechler 2012), also
    where d underflows; finite gradients everywhere."""
    d = log_d.clamp(max=50.0).exp()
    near = torch.log(-torch.expm1(-d.clamp(min=1e-30, max=_LN2)))
    far = torch.log1p(-torch.exp(-d.clamp(min=_LN2)))
    return torch.where(log_d < -60.0, log_d, torch.where(d <= _LN2, near, far))


_LN2 = math.log(2.0)


def _log_bin_probability(k: Tensor, loc: Tensor, log_scale: Tensor, bins: int) -> Tensor:
    """log P(K = k) for K the grid bin of a logistic Y (loc, exp(log_scale)); k a float index
    in 0 ... bins - 1, the edge bins taking the tails (see ``DiscretizedLogistic``)."""
    n = bins - 1
    inv_scale = torch.exp(-log_scale)
    centred = k / n - loc
    lower = (centred - 0.5 / n) * inv_scale  # a: the bin's lower edge, standardised
    upper = (centred + 0.5 / n) * inv_scale  # b
    first, last = k <= 0, k >= n
    zero = lower.new_zeros(())
    return (torch.where(first, zero, F.logsigmoid(-lower))  # log(1 - sigma(a))
            + torch.where(last, zero, F.logsigmoid(upper))  # log sigma(b)
            + torch.where(first | last, zero, _log1mexp(-math.log(n) - log_scale)))  # b - a


def _grid_mean(loc: Tensor, log_scale: Tensor, bins: int, chunk: int = 64) -> Tensor:
    """E[K] / (bins - 1) = sum_{j=1}^{bins-1} P(K >= j) / (bins - 1), exactly."""
    n = bins - 1
    loc, inv_scale = loc.unsqueeze(-1), torch.exp(-log_scale).unsqueeze(-1)
    total = torch.zeros_like(loc[..., 0] + inv_scale[..., 0])
    for start in range(0, n, chunk):
        edges = (torch.arange(start, min(start + chunk, n), device=loc.device,
                              dtype=loc.dtype) + 0.5) / n  # P(K >= j) = P(Y >= (j - 1/2) / n)
        total = total + torch.sigmoid((loc - edges) * inv_scale).sum(-1)
    return total / n


def _draw(loc: Tensor, log_scale: Tensor, bins: int) -> Tensor:
    """Y ~ Logistic(loc, exp(log_scale)), clamped to [0, 1] and rounded to the grid."""
    u = torch.rand_like(loc)
    y = loc + torch.exp(log_scale.clamp(max=50.0)) * (torch.log(u) - torch.log1p(-u))
    return _bin_index(y, bins) / (bins - 1)


class _DiscretizedLogistic(Distribution):
    """Independent discretized logistics, one per element of ``loc`` (see
    ``DiscretizedLogistic``)."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, loc: Tensor, log_scale: Tensor, bins: int) -> None:
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        self.bins = bins
        super().__init__(self.loc.shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return Grid(self.bins)

    @property
    def mean(self) -> Tensor:
        return _grid_mean(self.loc, self.log_scale, self.bins)

    def log_prob(self, value: Tensor) -> Tensor:
        return _log_bin_probability(_bin_index(value, self.bins), self.loc, self.log_scale,
                                    self.bins)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            return _draw(self.loc.expand(shape), self.log_scale.expand(shape), self.bins)


def _conditional_loc(loc: Tensor, coefficients: Tensor, c: int,
                     previous: Sequence[Tensor]) -> Tensor:
    """The location of channel ``c`` (``loc`` ``[..., C, M, H, W]``) given the values of the
    channels before it (each broadcastable to ``[..., M, H, W]``)."""
    out = loc[..., c, :, :, :]
    if coefficients.shape[-4]:
        first = c * (c - 1) // 2  # the row of coefficient (c, 0)
        for p, value in enumerate(previous):
            out = out + coefficients[..., first + p, :, :, :] * (value - 0.5)
    return out


class _DiscretizedLogisticMixture(Distribution):
    """A distribution over images ``[C, H, W]``: per pixel a mixture of products of
    discretized logistics over channels (see ``DiscretizedLogisticMixture``). ``logits``
    ``[..., M, H, W]``; ``loc``, ``log_scale`` ``[..., C, M, H, W]`` (final, floored);
    ``coefficients`` ``[..., P, M, H, W]`` (P = 0 or C (C - 1) / 2, after tanh)."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, logits: Tensor, loc: Tensor, log_scale: Tensor, coefficients: Tensor,
                 bins: int) -> None:
        self.log_weights = torch.log_softmax(logits, dim=-3)
        self.loc, self.log_scale, self.coefficients = loc, log_scale, coefficients
        self.bins = bins
        n_channels, _, height, width = loc.shape[-4:]
        super().__init__(loc.shape[:-4], torch.Size((n_channels, height, width)),
                         validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(Grid(self.bins), 3)

    def log_prob(self, value: Tensor) -> Tensor:
        k = _bin_index(value, self.bins)
        on_grid = k / (self.bins - 1)
        total = 0.0
        for c in range(self.event_shape[0]):
            previous = [on_grid[..., p, None, :, :] for p in range(c)]
            loc = _conditional_loc(self.loc, self.coefficients, c, previous)
            total = total + _log_bin_probability(k[..., c, None, :, :], loc,
                                                 self.log_scale[..., c, :, :, :], self.bins)
        return torch.logsumexp(self.log_weights + total, dim=-3).sum((-2, -1))

    @property
    def mean(self) -> Tensor:
        means: list[Tensor] = []  # per channel, per component [..., M, H, W]
        for c in range(self.event_shape[0]):
            loc = _conditional_loc(self.loc, self.coefficients, c, means)
            means.append(_grid_mean(loc, self.log_scale[..., c, :, :, :], self.bins))
        weights = self.log_weights.exp()
        return torch.stack([(weights * m).sum(-3) for m in means], dim=-3)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            component = torch.distributions.Categorical(
                logits=self.log_weights.movedim(-3, -1)).sample(sample_shape)  # [*S, ..., H, W]

            def pick(t: Tensor) -> Tensor:  # [..., R, M, H, W] -> [*S, ..., R, 1, H, W]
                t = t.expand(*sample_shape, *t.shape)
                index = component[..., None, None, :, :].expand(*t.shape[:-3], 1, *t.shape[-2:])
                return t.gather(-3, index)

            loc, log_scale = pick(self.loc), pick(self.log_scale)
            coefficients = pick(self.coefficients)
            values: list[Tensor] = []  # per channel [*S, ..., 1, H, W]
            for c in range(self.event_shape[0]):
                values.append(_draw(_conditional_loc(loc, coefficients, c, values),
                                    log_scale[..., c, :, :, :], self.bins))
            return torch.cat(values, dim=-3)


class Decoder(nn.Module):
    """p_theta(x|z): a network from z (``latent``) to the likelihood's parameters for every pixel
    of an image of ``data_shape`` ``[C, H, W]``. With stochastic layers (``posteriors.hierarchy``)
    the decoder reads the bottom layer only, the first ``latent`` units of z."""

    @checked
    def __init__(
        self,
        net: Callable[..., nn.Module],
        likelihood: Likelihood,
        data_shape: Sequence[PositiveInt],
        latent: PositiveInt,
    ) -> None:
        super().__init__()
        self.likelihood, self.latent = likelihood, latent
        channels, *size = data_shape
        self.net = within("net", lambda: net((latent,), (likelihood.channels(channels), *size)))

    def forward(self, z: Tensor) -> Distribution:
        if z.shape[-1] != self.latent:  # z = [z_1, ..., z_L]: p(x|z) = p(x|z_1)
            z = z[..., :self.latent]
        return self.likelihood(self.net(z))
