"""The torch distributions over pixel values that the likelihoods (``likelihoods``) return:
an image as one event (``Image``), torch's Bernoulli and Beta adapted to pixels, the
discretized logistic and its mixture (PixelCNN++) on the grid of 8-bit values, and the Poisson
and negative binomial for counts, their log-probabilities formed in float64.

The discretized ones are probabilities of quantized pixels, not densities: an 8-bit value k
arrives as x = k / 255 and is scored as the probability of its bin (PixelCNN++, Salimans et al.
2017; the IAF paper, Kingma et al. 2016), so -log p(x) / (D ln 2) is bits per dimension on the
8-bit data with no dequantization noise. Location and scale are on the [0, 1] scale of x.

The likelihood modules map decoder outputs to these parameters; kept apart so ``likelihoods``
holds the configurable parts (the ``model/likelihood`` options) and this the numerics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Distribution,
    Independent,
    NegativeBinomial,
    Poisson,
    constraints,
)
from torch.distributions import ContinuousBernoulli as _ContinuousBernoulli
from torch.nn import functional as F


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


class PixelBernoulli(Bernoulli):
    """torch's Bernoulli on logits, with log p(x) summed over ``dims`` before its sign flips:
    log p(x) = -sum BCE-with-logits(logits, x)."""

    def summed_log_prob(self, value: Tensor, dims: tuple[int, ...]) -> Tensor:
        logits = self.logits
        if value.shape != logits.shape:  # samples of z in front: a view, no copy
            value = value.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(dims)


class ClampedBeta(Beta):
    """A Beta whose ``log_prob`` clamps x into [eps, 1 - eps] (see ``likelihoods.Beta``)."""

    def __init__(self, a: Tensor, b: Tensor, eps: float) -> None:
        super().__init__(a, b, validate_args=False)
        self.eps = eps

    def log_prob(self, value: Tensor) -> Tensor:
        return super().log_prob(value.clamp(self.eps, 1.0 - self.eps))


class PixelContinuousBernoulli(_ContinuousBernoulli):
    """torch's continuous Bernoulli on logits L with its log-normaliser log C(lambda) computed
    from L itself. With lambda = sigmoid(L), 1 - 2 lambda = -tanh(L / 2) and atanh(1 - 2 lambda)
    = -L / 2, so C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = L / tanh(L / 2), even in
    L, 2 at L = 0 and ~|L| for large |L|. torch computes it from lambda clamped to [eps, 1 - eps]
    (eps the dtype's machine epsilon), so for |L| beyond ~16 in float32 (~36 in float64) its
    log C stays at log 16 (log 36) instead of growing as log |L|: the density no longer
    integrates to one (0.2 nats low per pixel at L = 20, 1.1 at L = 50) and the normaliser's
    gradient is 0 there. Here: log |L| - log tanh(|L| / 2), with log tanh(a / 2) =
    log(-expm1(-a)) - log1p(exp(-a)), and the series log 2 + log1p(y^2 / 3 - y^4 / 45),
    y = L / 2, near L = 0 (error below y^6 / 100 for |L| < 0.01). The mean, E[x] = lambda /
    (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)) = 1/2 + (coth y - 1/y) / 2, y = L / 2, is
    computed from L too (torch's, from the clamped lambda, is 1 - 1/16 for every L > 16
    instead of ~1 - 1/L): E[x|z], the images the decoder shows."""

    def _cont_bern_log_norm(self) -> Tensor:
        return continuous_bernoulli_log_normaliser(self.logits)

    @property
    def mean(self) -> Tensor:
        y = self.logits / 2
        small = y.abs() < 0.1
        safe = torch.where(small, torch.ones_like(y), y)
        langevin = torch.where(small, y / 3 - y.pow(3) / 45 + 2 * y.pow(5) / 945,
                               1 / torch.tanh(safe) - 1 / safe)  # coth y - 1/y
        return 0.5 + langevin / 2

    def icdf(self, value: Tensor) -> Tensor:
        """F^-1(u) from L: F(x) = (e^(L x) - 1) / (e^L - 1), so x = log1p(u expm1(L)) / L for
        L < 0 and, mirrored (x ~ CB(L) iff 1 - x ~ CB(-L)), 1 + log1p((1 - u) expm1(-L)) / L
        for L > 0; u + L u (1 - u) / 2 for |L| < 1e-3 (error O(L^2)). torch's, from the clamped
        lambda, draws as if |L| were ~16 wherever it is larger (draws twice too spread at
        L = 32): ``sample`` and ``rsample`` (wake-sleep's fantasies, drawn images) use this."""
        logits = self.logits
        small = logits.abs() < 1e-3
        safe = torch.where(small, torch.ones_like(logits), logits)
        negative = safe < 0
        a = -safe.abs()  # expm1 of -|L| only: no overflow, in either branch's gradient
        mirrored = torch.log1p(torch.where(negative, value, 1 - value) * torch.expm1(a)) / a
        far = torch.where(negative, mirrored, 1 - mirrored)
        return torch.where(small, value + logits * value * (1 - value) / 2, far)

    def entropy(self) -> Tensor:
        """-E[log p(x)] = softplus(L) - L E[x] - log C, from L (the mean and log C above)."""
        return F.softplus(self.logits) - self.logits * self.mean - self._cont_bern_log_norm()


class LogRatePoisson(Poisson):
    """torch's Poisson given its log rate eta (a decoder's output): log p(k) = k eta - e^eta -
    log k!, computed from eta, so no log of a rate that underflowed to 0 (torch's, from
    ``rate``, gives k log 0 = -inf there, or 0 x -inf = NaN at k = 0). Its terms grow with k
    and cancel (k = 10^4 at its mean: three terms near 10^5 for a log-probability near -5,
    where float32's spacing is 0.008), so they are formed in float64 and the result returned
    in eta's dtype."""

    def __init__(self, log_rate: Tensor, validate_args: bool | None = None) -> None:
        self.log_rate = log_rate
        super().__init__(log_rate.exp(), validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k, eta = value.double(), self.log_rate.double()
        return (k * eta - eta.exp() - torch.lgamma(k + 1)).to(self.log_rate.dtype)

    def expand(self, batch_shape, _instance=None) -> LogRatePoisson:
        return LogRatePoisson(self.log_rate.expand(batch_shape), validate_args=False)


class CountNegativeBinomial(NegativeBinomial):
    """torch's negative binomial (``total_count`` theta, ``logits`` l = log(mu / theta)), its
    log-probability log Gamma(k + theta) - log Gamma(theta) - log k! - theta softplus(l)
    + k log sigma(l) formed in float64 and returned in the logits' dtype: the log-gamma terms
    reach 10^9 for theta near the Poisson limit (e^20) and cancel to a few nats, which float32
    (a spacing of 10^2 there) cannot hold."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k, theta, logits = value.double(), self.total_count.double(), self.logits.double()
        out = (torch.lgamma(k + theta) - torch.lgamma(theta) - torch.lgamma(k + 1)
               - theta * F.softplus(logits) + k * F.logsigmoid(logits))
        return out.to(self.logits.dtype)


class ZeroInflated(Distribution):
    """A count distribution q with an extra zero drawn at rate pi = sigmoid(g) (``gate_logits``
    g): p(0) = pi + (1 - pi) q(0) and p(k) = (1 - pi) q(k) for k > 0, so
    log p(0) = logaddexp(log sigma(g), log sigma(-g) + log q(0)); its mean is (1 - pi) E_q[k]
    and its variance (1 - pi) (Var_q[k] + pi E_q[k]^2)."""

    arg_constraints: dict = {}
    support = constraints.nonnegative_integer

    def __init__(self, base: Distribution, gate_logits: Tensor) -> None:
        self.base, self.gate_logits = base, gate_logits
        super().__init__(base.batch_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        kept = F.logsigmoid(-self.gate_logits) + self.base.log_prob(value)
        return torch.where(value == 0, torch.logaddexp(F.logsigmoid(self.gate_logits), kept),
                           kept)

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(-self.gate_logits) * self.base.mean

    @property
    def variance(self) -> Tensor:
        pi = torch.sigmoid(self.gate_logits)
        return (1 - pi) * (self.base.variance + pi * self.base.mean ** 2)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            k = self.base.sample(torch.Size(sample_shape))
            zero = torch.rand_like(k) < torch.sigmoid(self.gate_logits)
            return k.masked_fill(zero, 0.0)


def continuous_bernoulli_log_normaliser(logits: Tensor) -> Tensor:
    """log C = log(L / tanh(L / 2)) of the continuous Bernoulli with logits L
    (``PixelContinuousBernoulli``), accurate for every L."""
    a = logits.abs()
    small = a < 1e-2
    safe = torch.where(small, torch.ones_like(a), a)
    far = safe.log() - (torch.log(-torch.expm1(-safe)) - torch.log1p(torch.exp(-safe)))
    y2 = (logits / 2).pow(2)
    near = math.log(2.0) + torch.log1p(y2 / 3 - y2.pow(2) / 45)
    return torch.where(small, near, far)


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



def smooth_floor(log_scale: Tensor, log_scale_min: float) -> Tensor:
    """log(exp(log_scale_min) + exp(log_scale)): a smooth floor, with gradients below it. The
    floor is filled on the tensor's device (``new_full``), not copied from the host, so that a
    CUDA graph can capture it."""
    return torch.logaddexp(log_scale, log_scale.new_full((), log_scale_min))


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
    in 0 ... bins - 1, the edge bins taking the tails (see ``likelihoods.DiscretizedLogistic``)."""
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


class PixelDiscretizedLogistic(Distribution):
    """Independent discretized logistics, one per element of ``loc`` (see
    ``likelihoods.DiscretizedLogistic``)."""

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


class PixelDiscretizedLogisticMixture(Distribution):
    """A distribution over images ``[C, H, W]``: per pixel a mixture of products of
    discretized logistics over channels (see ``likelihoods.DiscretizedLogisticMixture``). ``logits``
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
