"""A planar-flow posterior (Rezende & Mohamed 2015, Sec. 4.1): q(z|x) is a diagonal Gaussian
N(mu, diag sigma^2) pushed through K planar maps

    f_k(z) = z + u_k tanh(w_k . z + b_k),   log |det df_k/dz| = log |1 + u_k . psi_k(z)|,
    psi_k(z) = (1 - tanh^2(w_k . z + b_k)) w_k,

all amortised: mu, log sigma^2 and every (b_k, u_k, w_k) are outputs of the encoder's network,
2 D + K (2 D + 1) per data point for D latent dimensions. Each map is made invertible by using
u_hat_k with w_k . u_hat_k = -1 + softplus(w_k . u_k) > -1 (the paper's Appendix A.1) in place of
u_k. The maps are Pyro's ``ConditionedPlanar`` (``pyro.distributions.transforms``), driven by our
tensors, so the flow's algebra is a well-kept library's; the distribution is torch's
``TransformedDistribution``. One change: the log-determinant. With h = tanh(w . z + b),
1 + u_hat . psi = 1 + (1 - h^2)(-1 + softplus(w . u)) = h^2 + (1 - h^2) softplus(w . u), which we
compute as that sum of positive terms; Pyro's form cancels to 0 in float32 when a map nears its
limit (softplus -> 0, which training reaches) and h -> 0, and log 0 = -inf made a trained
model's log q(z|x) infinite at such draws.

What it offers (``parts.FEATURES``): reparameterized samples, and a finite second moment (each map
moves z by at most |u_hat_k|, so the tails are the base Gaussian's). What it does not: a density at
any z, since a planar map has no closed-form inverse (its samples are scored through the forward
pass: ``parts.scored_sample``), and a product form over dimensions. So it trains with the ELBO
(Monte-Carlo KL) and IWAE, and is evaluated by ``vae-eval`` like any posterior; DReG, wake-sleep
and the VampPrior, which need log q at other points, are refused when the model is composed.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.nn import functional as F

from vae_lightning.args import PositiveInt, checked

from .flow import Flow


class Planar(Flow):
    """q(z|x) = the Gaussian base pushed through ``length`` planar maps (see the module)."""

    features = frozenset({"rsample", "finite_variance"})

    @checked
    def __init__(self, length: PositiveInt = 4) -> None:
        self.length = length

    def n_params(self, latent: int) -> int:
        return 2 * latent + self.length * (2 * latent + 1)

    def __call__(self, params: Tensor) -> Distribution:
        planar = _planar_map()
        latent = (params.shape[-1] - self.length) // (2 * self.length + 2)
        maps = params[..., 2 * latent:].unflatten(-1, (self.length, 2 * latent + 1))
        return self.flow(params, latent, [
            planar((maps[..., k, :1], maps[..., k, 1:latent + 1],
                               maps[..., k, latent + 1:]))
            for k in range(self.length)])


@functools.cache
def _planar_map() -> type:
    """Pyro's ``ConditionedPlanar`` with the log-determinant as a sum of positive terms (see the
    module); built on first use, so that importing the package does not import Pyro."""
    from pyro.distributions.transforms.planar import ConditionedPlanar

    class StablePlanar(ConditionedPlanar):
        def _call(self, x: Tensor) -> Tensor:
            bias, u, w = self._params() if callable(self._params) else self._params
            act = torch.tanh(torch.matmul(w.unsqueeze(-2), x.unsqueeze(-1)).squeeze(-1) + bias)
            y = x + self.u_hat(u, w) * act  # Pyro's map, as its _call computes it
            limit = F.softplus(torch.matmul(u.unsqueeze(-2), w.unsqueeze(-1)).squeeze(-1))
            det = act.pow(2) + (1.0 - act.pow(2)) * limit
            self._cached_logDetJ = det.clamp_min(torch.finfo(det.dtype).tiny).log().squeeze(-1)
            return y

    return StablePlanar
