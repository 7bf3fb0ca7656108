"""The prior of the hyperspherical VAE (S-VAE; Davidson et al. 2018): the uniform distribution on
the unit sphere S^(m-1) of the latent space, p(z) = 1 / |S^(m-1)|, |S^(m-1)| = 2 pi^(m/2) /
Gamma(m/2), a density with respect to the sphere's surface measure, as q's von Mises-Fisher
(``posteriors.von_mises_fisher``). KL(q || p) is analytic (registered below; the paper's eq. 5):

    KL(vMF(mu, kappa) || U(S^(m-1))) = kappa A_m(kappa) + log C_m(kappa) + log |S^(m-1)|,

minus q's entropy plus the log area; it does not depend on mu, so the prior does not pull the
codes towards any point, unlike N(0, I)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl

from vae_lightning.posteriors.von_mises_fisher import VMF, sphere_log_area
from vae_lightning.priors import Prior


class UniformSphere(Distribution):
    """The uniform distribution on the unit sphere of R^m, with ``anchor`` a tensor giving the
    device and dtype: samples are normalised standard normal vectors."""

    arg_constraints: dict = {}
    support = constraints.real_vector  # the unit sphere

    def __init__(self, m: int, anchor: Tensor) -> None:
        self.m, self.anchor = m, anchor
        super().__init__(torch.Size(), torch.Size([m]), validate_args=False)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        z = torch.randn(torch.Size(sample_shape) + (self.m,), dtype=self.anchor.dtype,
                        device=self.anchor.device)
        return z / z.norm(dim=-1, keepdim=True)

    def log_prob(self, z: Tensor) -> Tensor:
        return z.new_full(z.shape[:-1], -sphere_log_area(self.m))

    def entropy(self) -> Tensor:
        return self.anchor.new_tensor(sphere_log_area(self.m))


@register_kl(VMF, UniformSphere)
def _kl_vmf_uniform(q: VMF, p: UniformSphere) -> Tensor:
    return -q.entropy() + sphere_log_area(q.m)


class HypersphericalUniform(Prior):
    """p(z) = U(S^(latent-1)), for the von Mises-Fisher posterior (``model=svae``)."""

    features: frozenset[str] = frozenset({"sphere"})
    requires: frozenset[str] = frozenset({"sphere"})

    def __init__(self, latent: int) -> None:
        super().__init__(latent)
        self.register_buffer("anchor", torch.zeros(()), persistent=False)  # the device

    def distribution(self) -> Distribution:
        return UniformSphere(self.latent, self.anchor)

    def path(self, z1: Tensor, z2: Tensor, t: Tensor) -> Tensor:
        """The great circle from ``z1`` to ``z2`` (unit vectors ``[..., latent]``) at the
        fractions ``t``: sin((1 - t) W) / sin W z1 + sin(t W) / sin W z2, W the angle between
        them (slerp), every point on the sphere, where the decoder is trained (the straight line
        passes inside the ball: |z| = 0.04 midway between nearly opposite points). Two points
        (nearly) opposite have no one great circle between them: a ``ValueError``."""
        cos = (z1 * z2).sum(-1, keepdim=True).clamp(-1.0, 1.0)
        angle = torch.acos(cos)
        if bool((angle > math.pi - 1e-3).any()):
            raise ValueError("interpolate: the two points' locations are opposite on the "
                             "sphere (model=svae), and no one great circle joins them: give "
                             "two other images.")
        small = angle < 1e-4  # the same point, or nearly: sin W / W = 1, the line is the arc
        sin = torch.where(small, torch.ones_like(angle), torch.sin(angle))
        a = torch.where(small, 1 - t, torch.sin((1 - t) * angle) / sin)
        b = torch.where(small, t * torch.ones_like(angle), torch.sin(t * angle) / sin)
        return a * z1 + b * z2
