"""A planar-flow posterior (Rezende & Mohamed 2015, Sec. 4.1): q(z|x) is a diagonal Gaussian
N(mu, diag sigma^2) pushed through K planar maps

    f_k(z) = z + u_k tanh(w_k . z + b_k),   log |det df_k/dz| = log |1 + u_k . psi_k(z)|,
    psi_k(z) = (1 - tanh^2(w_k . z + b_k)) w_k,

all amortised: mu, log sigma^2 and every (b_k, u_k, w_k) are outputs of the encoder's network,
2 D + K (2 D + 1) per data point for D latent dimensions. Each map is made invertible by using
u_hat_k with w_k . u_hat_k >= -1 (the paper's Appendix A.1) in place of u_k. The maps are Pyro's
``ConditionedPlanar`` (``pyro.distributions.transforms``), driven by our tensors, so the flow's
algebra is a well-kept library's; the distribution is torch's ``TransformedDistribution``.

What it offers (``parts.FEATURES``): reparameterized samples, and a finite second moment (each map
moves z by at most |u_hat_k|, so the tails are the base Gaussian's). What it does not: a density at
any z, since a planar map has no closed-form inverse (its samples are scored through the forward
pass: ``parts.scored_sample``), and a product form over dimensions. So it trains with the ELBO
(Monte-Carlo KL) and IWAE, and is evaluated by ``vae-eval`` like any posterior; DReG, wake-sleep
and the VampPrior, which need log q at other points, are refused when the model is composed.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

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
        from pyro.distributions.transforms.planar import ConditionedPlanar

        latent = (params.shape[-1] - self.length) // (2 * self.length + 2)
        maps = params[..., 2 * latent:].unflatten(-1, (self.length, 2 * latent + 1))
        return self.flow(params, latent, [
            ConditionedPlanar((maps[..., k, :1], maps[..., k, 1:latent + 1],
                               maps[..., k, latent + 1:]))
            for k in range(self.length)])
