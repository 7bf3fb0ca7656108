"""The prior of relaxed categorical latents (``posteriors.relaxed_categorical``): N(0, I) over
the continuous dimensions and the uniform categorical over each one-hot block of K.

Its form follows the posterior's mode, so that log q and log p are densities of the same kind:
in training the uniform Concrete at q's temperature (Maddison et al. 2017 score relaxed samples
under a relaxed prior), in evaluation the discrete uniform one-hot categorical (exact, so that
``vae-eval``'s importance-weighted estimate bounds log p(x)).

KL(q || p) is analytic (registered below): the Gaussian KL plus, per block, the categorical KL

    KL(Cat(q) || Uniform(K)) = sum_k q_k log q_k + log K,

which Jang et al. 2017 (Sec. 3) and Dupont 2018 (JointVAE, Sec. 3) use in place of the relaxed
KL, which has no closed form. It is exact for the discrete latents scored in evaluation; in
training it is the KL of the categoricals being relaxed. Objectives that score samples (IWAE,
``kl=mc``) use the relaxed densities instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal, kl_divergence, register_kl

from vae_lightning.posteriors.relaxed_categorical import (
    JointLatent,
    RelaxedCategorical,
    categorical_blocks,
)
from vae_lightning.priors import Prior, UnitNormal


class UniformCategorical(Prior):
    """p(z) = N(0, I_continuous) x prod_blocks Uniform(K), over the layout of the model's
    ``RelaxedCategorical`` posterior, which ``bind`` hands it."""

    features: frozenset[str] = frozenset({"one_hot_blocks"})
    requires: frozenset[str] = frozenset()

    def __init__(self, latent: int) -> None:
        super().__init__(latent)
        self._family: list[RelaxedCategorical] = []  # a plain list: not registered twice
        self.register_buffer("anchor", torch.zeros(()), persistent=False)  # the device

    def bind(self, encoder: nn.Module) -> None:
        family = encoder.posterior
        if not isinstance(family, RelaxedCategorical):
            raise ValueError(f"the prior UniformCategorical needs the posterior to have one-hot "
                             f"blocks (model/posterior=relaxed_categorical), which the posterior "
                             f"{family!r} does not have; use model=gumbel")
        self._family[:] = [family]
        family.blocks(self.latent)

    def distribution(self) -> Distribution:
        if not self._family:
            raise RuntimeError("UniformCategorical.bind(encoder) was not called: the prior "
                               "follows the encoder's layout and temperature.")
        family = self._family[0]
        blocks = family.blocks(self.latent)
        logits = self.anchor.new_zeros(blocks, family.categories)
        parts = [self.normal()] if family.continuous else []
        parts.append(categorical_blocks(logits, family.tau() if family.training else None))
        return JointLatent(parts, logits, family.draws)  # scores q's last draw from its logs


    def normal(self) -> Distribution:
        """N(0, I) over the continuous dimensions (a ``UnitNormal``: analytic KL to q's)."""
        loc = self.anchor.new_zeros(self._family[0].continuous)
        return UnitNormal(Normal(loc, torch.ones_like(loc), validate_args=False), 1)


@register_kl(JointLatent, JointLatent)
def _kl_joint(q: JointLatent, p: JointLatent) -> Tensor:
    """The Gaussian parts' KL (torch's registry) plus sum over blocks of KL(Cat(q) || Cat(p)),
    = sum q log q + log K for a uniform p (the module's docstring)."""
    kl = sum(kl_divergence(a, b) for a, b in zip(q.parts[:-1], p.parts[:-1]))
    log_q = q.logits.log_softmax(-1)
    log_p = p.logits.log_softmax(-1)
    return kl + (log_q.exp() * (log_q - log_p)).sum((-2, -1))


def uniform_kl(logits: Tensor) -> Tensor:
    """KL(Cat(softmax(logits)) || Uniform(K)) = sum_k q_k log q_k + log K, per row of [..., K]."""
    log_q = logits.log_softmax(-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])
