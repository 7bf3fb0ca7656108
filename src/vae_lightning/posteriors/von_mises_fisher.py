"""The von Mises-Fisher posterior of the hyperspherical VAE (S-VAE; Davidson, Falorsi, De Cao,
Kipf & Tomczak 2018, "Hyperspherical variational auto-encoders"): z on the unit sphere
S^(m-1) of R^m, m = ``latent``, with density with respect to the sphere's surface measure

    q(z | mu, kappa) = C_m(kappa) exp(kappa mu^T z),
    C_m(kappa) = kappa^(m/2 - 1) / ((2 pi)^(m/2) I_(m/2-1)(kappa)),

mu a unit mean direction and kappa > 0 the concentration; I_v is the modified Bessel function of
the first kind. E[z] = A_m(kappa) mu, A_m = I_(m/2) / I_(m/2-1).

Sampling (the paper's Sec. 3.1, Algorithm 1): w = mu^T z by Wood's (1994) rejection sampler,
v uniform on S^(m-2), z' = (w, sqrt(1 - w^2) v), then the Householder reflection that maps e_1
to mu. Gradients to mu go through the reflection (exact). To kappa, ``gradient``:

- ``implicit`` (default): implicit reparameterization (Figurnov, Mohamed & Mnih 2018) of w,
  whose density is q_w(w) = c exp(kappa w) (1 - w^2)^((m-3)/2) on [-1, 1]:
  dw/dkappa = -(dF/dkappa)(w) / q_w(w) = -int_{-1}^{w} (t - A_m) exp(kappa (t - w))
  ((1 - t^2) / (1 - w^2))^((m-3)/2) dt, by 64-point Gauss-Legendre quadrature (nodes within
  50 / kappa of w, where the rest is below e^-50; on the whole interval through t = -1 + (1 + w)
  s^2, which removes the circle's endpoint singularity). Unbiased: E[dw/dkappa] = A_m'(kappa).
- ``g_rep``: through w = h(eps, kappa) at the accepted eps ~ Beta((m-1)/2, (m-1)/2), the paper's
  g_rep without its correction term g_cor (Naesseth et al. 2017), as the authors' code: biased
  where the acceptance varies with kappa, d E[mu^T z] / d kappa about a fifth low on S^2 at
  kappa = 1, within 1 % on S^49. For reproducing their runs.

Both are tested against A_m'(kappa) = 1 - A_m^2 - (m - 1) A_m / kappa
(tests/test_von_mises_fisher.py).

The encoder emits m + 1 numbers: mu is the first m normalised, kappa = 1 + softplus(the last),
the authors' parameterisation (a concentration of at least 1 keeps the sampler and the Bessel
functions in a well-conditioned range). Its prior is the uniform distribution on the same sphere
(``priors.hyperspherical``; ``model=svae`` sets both): log q and log p are then densities with
respect to the same measure, so the KL and the importance-weighted bound are exact. log I_v is
scipy's exponentially scaled ``ive`` (double precision, any real order), through an autograd
function whose derivative is d/dk log I_v(k) = v / k + I_(v+1)(k) / I_v(k); on a GPU its
arguments (one concentration per data point) go through the host.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn
from torch.distributions import Beta, Distribution, constraints
from torch.nn import functional as F

from vae_lightning.args import checked
from vae_lightning.posteriors import Family

Gradient = Literal["implicit", "g_rep"]


def _log_iv(v: float, x: np.ndarray) -> np.ndarray:
    """log I_v(x) for x > 0 in double precision: log ive(v, x) + x; where ive underflows (x
    far below v), the series' first term v log(x / 2) - log Gamma(v + 1), whose relative error
    is below x^2 / (4 (v + 1))."""
    scaled = special.ive(v, x)
    with np.errstate(divide="ignore"):
        exact = np.log(scaled) + x
    return np.where(scaled > 0, exact, v * np.log(x / 2) - special.gammaln(v + 1))


class _LogBesselI(torch.autograd.Function):
    """log I_v(x) of a tensor x > 0 (a fixed real order v >= 0), differentiable in x."""

    @staticmethod
    def forward(ctx, x: Tensor, v: float) -> Tensor:
        ctx.v = v
        ctx.save_for_backward(x)
        values = _log_iv(v, x.detach().double().cpu().numpy())
        return torch.as_tensor(values).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (ctx.v / x + bessel_ratio(x, ctx.v)), None


def log_bessel_i(x: Tensor, v: float) -> Tensor:
    """log I_v(x), the log of the modified Bessel function of the first kind of order v >= 0, at
    x > 0, differentiable in x (any number of times: its derivative is built from itself)."""
    return _LogBesselI.apply(x, v)


def bessel_ratio(x: Tensor, v: float) -> Tensor:
    """I_(v+1)(x) / I_v(x), differentiable in x."""
    return torch.exp(log_bessel_i(x, v + 1) - log_bessel_i(x, v))


@functools.cache
def _legendre(n: int = 64) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights on [-1, 1], float64."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def dw_dkappa(w: Tensor, one_minus_w: Tensor, kappa: Tensor, a: Tensor, m: int) -> Tensor:
    """The implicit reparameterization gradient of w = mu^T z ~ q_w(w | kappa) (the module's
    docstring): -int_{-1}^{w} (t - a) exp(kappa (t - w)) ((1 - t^2) / (1 - w^2))^((m-3)/2) dt,
    a = A_m(kappa), elementwise over tensors of one shape (double precision). With u = w - t:
    on [0, 50 / kappa] where that is inside [0, 1 + w], else on all of it through u = (1 + w)
    (1 - s^2), s in [0, 1], which makes the (1 - t^2)^(-1/2) of the circle smooth at t = -1."""
    nodes, weights = (x.to(w.device) for x in _legendre())
    s = (nodes + 1) / 2
    # At w = -1 the integral is empty and at w = 1 it is the whole mean of t - a: 0 at both.
    inside = (one_minus_w > 0) & (one_minus_w < 2)
    one_minus_w = torch.where(inside, one_minus_w, 1.0)
    length = (2 - one_minus_w)[..., None]  # 1 + w
    reach = torch.minimum(length, 50 / kappa[..., None])
    whole = reach >= length
    u = torch.where(whole, length * (1 - s**2), reach * s)
    du = torch.where(whole, length * s, reach / 2) * weights
    omw = one_minus_w[..., None]
    ratio = (omw + u) * (length - u) / (omw * length)  # (1 - t^2) / (1 - w^2)
    integrand = (1 - omw - u - a[..., None]) * torch.exp(-kappa[..., None] * u) * ratio ** (
        (m - 3) / 2)
    return torch.where(inside, -(integrand * du).sum(-1), 0.0)


def wood(b: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Wood's map from eps in (0, 1) to w = mu^T z, with 1 - w and sqrt(1 - w^2), at b (the
    result in b's dtype): w = (1 - (1 + b) eps) / (1 - (1 - b) eps), 1 - w = 2 b eps / (1 -
    (1 - b) eps), sqrt(1 - w^2) = 2 sqrt(b) sqrt(eps (1 - eps)) / (1 - (1 - b) eps), free of
    cancellation near w = 1. sqrt(eps (1 - eps)) is taken in eps's (double) precision, apart
    from b: an eps that rounds to 1 in float32 (Beta(1/2, 1/2) on the circle puts mass there)
    would make sqrt(b eps (1 - eps)) 0 and its gradient 0 / 0; b > 0 always."""
    spread = torch.sqrt(eps * (1 - eps)).to(b.dtype)
    eps = eps.to(b.dtype)
    denominator = 1 - (1 - b) * eps
    return ((1 - (1 + b) * eps) / denominator, 2 * b * eps / denominator,
            2 * torch.sqrt(b) * spread / denominator)


def sphere_log_area(m: int) -> float:
    """log of the surface area of S^(m-1) in R^m: log(2 pi^(m/2) / Gamma(m/2))."""
    return math.log(2) + m / 2 * math.log(math.pi) - math.lgamma(m / 2)


class VMF(Distribution):
    """vMF(mu, kappa) on S^(m-1): ``loc`` mu ``[..., m]`` of unit norm, ``concentration``
    kappa ``[...]`` > 0 (the module's docstring)."""

    arg_constraints = {"loc": constraints.real_vector, "concentration": constraints.positive}
    support = constraints.real_vector  # the unit sphere, which torch has no constraint for
    has_rsample = True

    def __init__(self, loc: Tensor, concentration: Tensor, validate_args: bool | None = False,
                 gradient: Gradient = "implicit") -> None:
        if loc.shape[-1] < 2:
            raise ValueError(f"a von Mises-Fisher distribution needs a latent space of at least 2 "
                             f"dimensions (the circle S^1); got {loc.shape[-1]}")
        self.loc, self.concentration, self.gradient = loc, concentration, gradient
        self.m = loc.shape[-1]
        super().__init__(concentration.shape, loc.shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.mean_resultant().unsqueeze(-1) * self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    def mean_resultant(self) -> Tensor:
        """A_m(kappa) = E[mu^T z] = I_(m/2)(kappa) / I_(m/2-1)(kappa)."""
        return bessel_ratio(self.concentration, self.m / 2 - 1)

    def log_normalizer(self) -> Tensor:
        """log C_m(kappa) = (m/2 - 1) log kappa - (m/2) log(2 pi) - log I_(m/2-1)(kappa)."""
        v, kappa = self.m / 2 - 1, self.concentration
        return v * kappa.log() - self.m / 2 * math.log(2 * math.pi) - log_bessel_i(kappa, v)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.concentration * (self.loc * z).sum(-1) + self.log_normalizer()

    def entropy(self) -> Tensor:
        return -self.concentration * self.mean_resultant() - self.log_normalizer()

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)  # [*sample, *batch, m]
        kappa = self.concentration.expand(shape[:-1])
        w, root = self._sample_w(kappa)
        v = torch.randn(shape[:-1] + (self.m - 1,), dtype=self.loc.dtype, device=self.loc.device)
        v = v / v.norm(dim=-1, keepdim=True)
        z = torch.cat([w.unsqueeze(-1), root.unsqueeze(-1) * v], -1)
        return self._reflect(z)

    def _sample_w(self, kappa: Tensor) -> tuple[Tensor, Tensor]:
        """w = mu^T z by Wood's sampler, and sqrt(1 - w^2), both differentiable in kappa (by
        ``gradient``), b = (m - 1) / (2 kappa + sqrt(4 kappa^2 + (m - 1)^2)) (Wood's b, written
        without its cancellation)."""
        m1 = self.m - 1
        b = m1 / (2 * kappa + torch.sqrt(4 * kappa**2 + m1**2))
        eps = self._accepted_eps(kappa.detach().double(), b.detach().double())
        if self.gradient == "g_rep":  # through b at the accepted eps
            w, _, root = wood(b, eps)
            return w, root
        w, one_minus_w, root = wood(b.detach().double(), eps)
        if not (torch.is_grad_enabled() and kappa.requires_grad):  # sample(), evaluation
            return w.to(kappa.dtype), root.to(kappa.dtype)
        # The implicit gradients dw/dkappa (dw_dkappa) and d sqrt(1 - w^2)/dkappa = -w /
        # sqrt(1 - w^2) dw/dkappa, attached as value + (kappa - kappa) x derivative.
        kappa64 = kappa.detach().double()
        slope = dw_dkappa(w, one_minus_w, kappa64, bessel_ratio(kappa64, self.m / 2 - 1), self.m)
        root_slope = torch.where(root > 0, -w * slope / root.clamp_min(1e-300), 0.0)
        step = kappa - kappa.detach()  # 0, with kappa's gradient
        return (w.to(kappa.dtype) + step * slope.to(kappa.dtype),
                root.to(kappa.dtype) + step * root_slope.to(kappa.dtype))

    def _accepted_eps(self, kappa: Tensor, b: Tensor) -> Tensor:
        """Wood's (1994) rejection step, in double precision, per element of ``kappa``: eps ~
        Beta((m-1)/2, (m-1)/2), w(eps) by ``wood``, accepted when kappa w + (m - 1) log(1 - x0 w)
        - c >= log u, u ~ U(0, 1), x0 = (1 - b) / (1 + b), c = kappa x0 + (m - 1) log(1 - x0^2).
        The acceptance rate is above 1/2 for every m and kappa."""
        m1 = self.m - 1
        x0 = (1 - b) / (1 + b)
        c = kappa * x0 + m1 * torch.log1p(-x0**2)
        half = torch.tensor(m1 / 2, dtype=torch.float64, device=kappa.device)
        beta = Beta(half, half)
        eps = torch.empty_like(kappa)
        pending = torch.ones_like(kappa, dtype=torch.bool)
        while pending.any():
            n = int(pending.sum())
            e = beta.sample((n,))
            k, bb, xx, cc = kappa[pending], b[pending], x0[pending], c[pending]
            w = wood(bb, e)[0]
            log_u = torch.rand(n, dtype=torch.float64, device=kappa.device).log()
            accept = k * w + m1 * torch.log1p(-xx * w) - cc >= log_u
            where = pending.nonzero(as_tuple=True)
            chosen = tuple(index[accept] for index in where)
            eps[chosen] = e[accept]
            pending[chosen] = False
        return eps

    def _reflect(self, z: Tensor) -> Tensor:
        """The Householder reflection H = I - 2 u u^T / u^T u, u = e_1 - mu, which maps e_1 to
        mu (H e_1 = mu), applied to z; the identity where mu = e_1 already."""
        u = -self.loc.clone()
        u[..., 0] += 1
        norm2 = (u * u).sum(-1, keepdim=True)
        small = norm2 < 1e-12
        safe = torch.where(small, torch.ones_like(norm2), norm2)  # no 0 / 0 in the unused branch
        scale = 2 * (u * z).sum(-1, keepdim=True) / safe
        return torch.where(small, z, z - scale * u)


class VonMisesFisher(Family):
    """q(z|x) = vMF(mu(x), kappa(x)) on the unit sphere of the latent space (the module's
    docstring), with the hyperspherical uniform prior (``model=svae``)."""

    features = frozenset({"rsample", "density", "finite_variance", "sphere"})
    uncapturable = ("the von Mises-Fisher posterior's rejection sampler loops until every draw "
                    "is accepted, and its Bessel functions run on the host")

    @checked
    def __init__(self, gradient: Gradient = "implicit") -> None:
        self.gradient = gradient

    def n_params(self, latent: int) -> int:
        if latent < 2:
            raise ValueError(f"model.latent={latent}: a von Mises-Fisher posterior lives on the "
                             "unit sphere of the latent space, which needs model.latent >= 2")
        return latent + 1

    def __call__(self, params: Tensor) -> Distribution:
        direction, raw = params[..., :-1], params[..., -1]
        loc = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return VMF(loc, 1 + F.softplus(raw), gradient=self.gradient)

    def location(self, q: Distribution) -> Tensor:
        """The mean direction mu: a point of the sphere, where the decoder is trained (the mean
        A_m(kappa) mu lies inside the ball)."""
        return q.loc

    def stddev(self, q: Distribution) -> Tensor | None:
        return None

    def bind(self, prior: nn.Module) -> None:
        if "sphere" not in prior.features:  # parts.FEATURES
            raise ValueError(f"the posterior VonMisesFisher needs the prior to be a distribution "
                             f"on the unit sphere (model/prior=hyperspherical_uniform), which the "
                             f"prior {type(prior).__name__} does not have; use model=svae")
