"""The top-down prior of stochastic layers (``posteriors.hierarchy``): over z = [z_1, ..., z_L],

    p(z) = N(z_L; 0, I) prod_{l=1..L-1} p(z_l | z_{l+1}),

each conditional a posterior family (Gaussian by default) whose parameters ``net`` computes from
the layer above, trained with the model (Burda et al. 2015's two-stochastic-layer generative
network: z_2 -> z_1 -> x). log p(z) is one pass of each network at any z; a draw is ancestral,
from the top. KL(q || p) has no closed form beyond one layer (Monte-Carlo KL); with one layer the
prior is N(0, I) itself (``StandardNormal``'s distribution, analytic KL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn
from torch.distributions import Distribution

from vae_lightning.args import PositiveInt, checked, fail
from vae_lightning.posteriors import Family, Gaussian
from vae_lightning.posteriors.hierarchy import Chain, check_total, link

from . import StandardNormal


class TopDown(StandardNormal):
    """p(z) = N(z_L; 0, I) prod_l p(z_l | z_{l+1}) over ``layers`` = [|z_1|, ..., |z_L|] (their
    sum is the model's latent size); ``net`` (called with the sizes, e.g. ``nets.MLP``) maps
    z_{l+1} to the parameters of p(z_l | z_{l+1}), a ``family``."""

    @checked
    def __init__(self, latent: PositiveInt, layers: Sequence[PositiveInt],
                 net: Callable[..., nn.Module], family: Family | None = None) -> None:
        layers = list(layers)
        if not layers:
            fail(self, "layers", layers, "the sizes of one or more stochastic layers, the "
                 "bottom (z_1) first, e.g. [100, 50]")
        check_total(layers, latent)
        super().__init__(layers[-1])  # N(0, I) over the top layer
        self.latent, self.layers = latent, layers
        self.family = family if family is not None else Gaussian()
        # nets[l] maps z_{l+2} to p(z_{l+1} | z_{l+2}): z_2 -> z_1 first.
        self.nets = nn.ModuleList(net((above,), (self.family.n_params(below),))
                                  for below, above in zip(layers, layers[1:]))
        if self.nets:
            self.features = frozenset()  # the layers depend on each other

    def distribution(self) -> Distribution:
        top = super().distribution()
        if not self.nets:
            return top
        return Chain(top, [link(self.family, net, fixed=False) for net in reversed(self.nets)],
                     self.layers, top_down=True)

    def __repr__(self) -> str:
        return f"TopDown(layers={self.layers}, family={self.family!r})"
