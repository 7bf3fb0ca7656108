"""A flow prior trained with the model: a masked autoregressive flow (MAF; Papamakarios, Pavlakou
& Murray 2017) over z on a standard normal base,

    u = T_K(... T_1(z)),   T_k(z)_i = exp(s_{k,i}) z_i + m_{k,i},   [m_k, s_k] = MADE_k(z_{<i}),
    log p(z) = log N(u; 0, I) + sum_k sum_i s_{k,i},

with the variables' order reversed from step to step (``posteriors.made``). The density is one
network pass per step at any z (what the KL needs, at the posterior's samples); a draw z ~ p(z)
inverts the steps one dimension at a time (D passes per step: ``sample()`` and ``vae-sample``).
The steps are Pyro's ``AffineAutoregressive`` (its log-scale clipped to [-5, 3]) around our
MADEs, used in the inverse direction (``.inv``): Pyro's algebra for the maps and their inverse.
The MADEs' output layers start at zero, so the prior starts as N(0, I).

KL(q || p) has no closed form (Monte-Carlo KL). Features: not a product over dimensions. It
requires, as N(0, I) does, a posterior with a finite second moment: its log-density falls
quadratically in z (the log-scales are bounded), so KL(q || p) is infinite otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution

from vae_lightning.args import PositiveInt, checked
from vae_lightning.posteriors.made import MADE

from . import Prior


class FlowPrior(Prior):
    """p(z): N(0, I) pushed through ``length`` MAF steps, each a MADE with ``hidden`` ELU layers
    (see the module)."""

    features: frozenset[str] = frozenset()

    @checked
    def __init__(self, latent: PositiveInt, length: PositiveInt = 4,
                 hidden: Sequence[PositiveInt] = (256, 256)) -> None:
        super().__init__(latent)
        self.length, self.hidden = length, list(hidden)
        self.steps = nn.ModuleList(MADE(latent, self.hidden, reverse=k % 2 == 1)
                                   for k in range(length))
        self.register_buffer("loc", torch.zeros(latent), persistent=False)
        self.register_buffer("scale", torch.ones(latent), persistent=False)

    def distribution(self) -> Distribution:
        """Built anew at each call (cheap: the steps wrap the MADEs), so that no transform's
        one-entry cache outlives a parameter update."""
        from pyro.distributions.transforms.affine_autoregressive import AffineAutoregressive

        base = Independent(Normal(self.loc, self.scale, validate_args=False), 1)
        return TransformedDistribution(base, [AffineAutoregressive(made).inv
                                              for made in reversed(self.steps)],
                                       validate_args=False)
