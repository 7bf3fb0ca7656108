"""A radial-flow posterior (Rezende & Mohamed 2015, Sec. 4.1): q(z|x) is a diagonal Gaussian
pushed through K radial maps, each a contraction or expansion around a point z0_k,

    f_k(z) = z + beta_k h(alpha_k, r) (z - z0_k),   r = |z - z0_k|,   h = 1 / (alpha_k + r),
    log |det df_k/dz| = (D - 1) log(1 + beta_k h) + log(1 + beta_k h + beta_k h'(r) r),

all amortised: mu, log sigma^2 and every (z0_k, alpha_k, beta_k) are outputs of the encoder's
network, 2 D + K (D + 2) per data point. alpha_k = softplus(.) > 0 and beta_k = -alpha_k +
softplus(b') >= -alpha_k, which makes each map invertible (the paper's Appendix A.2). The maps are
Pyro's ``ConditionedRadial``, driven by our tensors, with the log-determinant's two factors
written without cancellation (``StableRadial``): with s = softplus(b'),
    1 + beta h = (r + s) / (alpha + r),
    1 + beta h + beta h'(r) r = (r (2 alpha + r) + alpha s) / (alpha + r)^2,
sums of non-negative terms, where Pyro's log1p(beta h) subtracts nearly equal numbers for a
strong contraction (s -> 0 near z0_k) and can give a log of 0 or of a negative rounding.

What it offers (``parts.FEATURES``): reparameterized samples and a finite second moment (a map
moves z by |beta_k| r / (alpha_k + r) < |beta_k|, so the tails are the base's). Not a density at
any z: the inverse of a radial map has no closed form (samples are scored through the forward
pass), and not a product over dimensions. So, like the planar flow, it trains with the ELBO
(Monte-Carlo KL) and IWAE and is evaluated by ``vae-eval``; DReG, wake-sleep and the VampPrior
are refused when the model is composed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Transform

from vae_lightning.args import PositiveInt, checked

from .flow import Flow


class Radial(Flow):
    """q(z|x) = the Gaussian base pushed through ``length`` radial maps (see the module)."""

    features = frozenset({"rsample", "finite_variance"})

    @checked
    def __init__(self, length: PositiveInt = 4) -> None:
        self.length = length

    def n_params(self, latent: int) -> int:
        return 2 * latent + self.length * (latent + 2)

    def __call__(self, params: Tensor) -> Distribution:
        latent = self.latent_of(params)
        maps = params[..., 2 * latent:].unflatten(-1, (self.length, latent + 2))
        transforms = [stable_radial((maps[..., k, :latent], maps[..., k, latent:latent + 1],
                                     maps[..., k, latent + 1:]))
                      for k in range(self.length)]
        return self.flow(params, latent, transforms)



def stable_radial(params: tuple[Tensor, Tensor, Tensor]) -> Transform:
    """Pyro's ``ConditionedRadial`` for ``(z0, alpha', beta')``, its log-determinant computed
    without cancellation (the module's formulas); the map itself is Pyro's, operation for
    operation."""
    return _stable_radial_class()(params)


@functools.cache
def _stable_radial_class() -> type:
    from pyro.distributions.transforms.radial import ConditionedRadial  # Pyro loads slowly

    class StableRadial(ConditionedRadial):
        def _call(self, x: Tensor) -> Tensor:
            z0, alpha_prime, beta_prime = self._params
            alpha, s = F.softplus(alpha_prime), F.softplus(beta_prime)
            diff = x - z0
            r = diff.norm(dim=-1, keepdim=True)
            log_alpha_r = torch.log(alpha + r)
            self._cached_logDetJ = ((z0.size(-1) - 1) * (torch.log(r + s) - log_alpha_r)
                                    + torch.log(r * (2 * alpha + r) + alpha * s)
                                    - 2 * log_alpha_r).sum(-1)
            return x + (-alpha + s) * (alpha + r).reciprocal() * diff

    return StableRadial
