"""The Ladder VAE's inference (Sønderby, Raiko, Maaløe, Sønderby & Winther 2016): stochastic
layers z = [z_1, ..., z_L] inferred top-down, with the generative model's own top-down networks
(``priors.hierarchy.TopDown``: p(z_l | z_{l+1}) = N(mu_p, sigma_p^2)) corrected at each layer by a
data-dependent Gaussian N(mu^_l, sigma^_l^2) from a bottom-up pass over x:

    q(z_L | x)          = N(mu^_L, sigma^_L^2),
    q(z_l | z_{l+1}, x) = N(mu_q, sigma_q^2),  sigma_q^-2 = sigma^_l^-2 + sigma_p^-2,
                          mu_q = (mu^_l sigma^_l^-2 + mu_p sigma_p^-2) sigma_q^2   (eq. 17-19),

the precision-weighted product of the two Gaussians, with mu_p, sigma_p computed at the sample
z_{l+1} ~ q. q(z|x) is a ``hierarchy.Chain`` (top-down), so every objective, the IW estimate and
vae-eval see one q. The paper's bottom-up pass is a stack of deterministic networks, one per
layer; here the encoder's network gives every layer's (mu^_l, log sigma^_l^2) in one pass (a
shared bottom-up network: the same depth for each layer). Batch normalisation, which the paper
also uses, is not part of it; its KL warm-up is ``model.objective.warmup_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.args import PositiveInt, checked, fail

from . import Family, Gaussian
from .hierarchy import Chain, check_total, link


def precision_weighted(q: Independent, p: Independent) -> Independent:
    """N(mu_q, sigma_q^2) with sigma_q^-2 = sigma_1^-2 + sigma_2^-2 and mu_q = sigma_q^2 (mu_1
    sigma_1^-2 + mu_2 sigma_2^-2): the normalised product of two diagonal Gaussians."""
    precision_q, precision_p = q.base_dist.scale ** -2, p.base_dist.scale ** -2
    variance = 1 / (precision_q + precision_p)
    loc = variance * (q.base_dist.loc * precision_q + p.base_dist.loc * precision_p)
    return Independent(Normal(loc, variance.sqrt(), validate_args=False), 1)


class Ladder(Family, nn.Module):
    """q(z|x) of the Ladder VAE over ``layers`` = [|z_1|, ..., |z_L|] (see the module): the
    encoder's network gives each layer's bottom-up Gaussian (2 x sum(layers) outputs); the
    top-down terms are the prior's networks, which must be a ``TopDown`` prior over the same
    layers (``bind``)."""

    features = frozenset({"rsample", "density", "finite_variance"})

    @checked
    def __init__(self, layers: Sequence[PositiveInt]) -> None:
        nn.Module.__init__(self)
        self.layers, self.family = list(layers), Gaussian()
        if len(self.layers) < 2:
            fail(self, "layers", self.layers, "two or more stochastic layers, the bottom (z_1) "
                 "first, e.g. [64, 32, 16, 8, 4] (one layer is model/posterior=gaussian)")
        self._prior: list[nn.Module] = []  # the prior, kept out of this module's parameters

    def bind(self, prior: nn.Module) -> None:
        # What q uses of a top-down prior (``priors.hierarchy.TopDown``, which imports this
        # package: asked of the prior rather than imported): its layers, its networks
        # (``nets[l]``: z_{l+2} -> p(z_{l+1} | z_{l+2})) and their Gaussian family.
        if getattr(prior, "layers", None) != self.layers or not hasattr(prior, "nets") \
                or not isinstance(getattr(prior, "family", None), Gaussian):
            raise ValueError(f"the Ladder posterior over layers {self.layers} infers top-down "
                             "with the prior's networks: it needs model/prior=hierarchy over the "
                             f"same layers with Gaussian layers, not {prior!r} (model=ladder sets "
                             "both).")
        self._prior[:] = [prior]

    def n_params(self, latent: int) -> int:
        check_total(self.layers, latent)
        return 2 * latent

    def __call__(self, params: Tensor) -> Distribution:
        if not self._prior:
            raise RuntimeError("Ladder.bind(prior) was not called: q is built with the prior's "
                               "top-down networks.")
        prior = self._prior[0]
        fixed = not params.requires_grad  # DReG's q held fixed: the prior's weights in q too
        # Each layer's bottom-up Gaussian from its block [mu^_l, log sigma^_l^2] of the
        # encoder's output, listed from the top down (the chain's sampling order).
        bottom_up = [self.family(block) for block in
                     params.split([2 * n for n in self.layers], dim=-1)][::-1]
        top_down = [link(prior.family, net, fixed) for net in reversed(prior.nets)]
        links = [lambda parent, up=up, down=down: precision_weighted(up, down(parent))
                 for up, down in zip(bottom_up[1:], top_down)]
        return Chain(bottom_up[0], links, self.layers, top_down=True)

    def location(self, q: Distribution) -> Tensor:
        return q.location(self.family)

    def stddev(self, q: Distribution) -> None:
        return None

    def __repr__(self) -> str:
        return f"Ladder(layers={self.layers})"
