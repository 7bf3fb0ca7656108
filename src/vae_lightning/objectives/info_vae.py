"""InfoVAE (Zhao, Song & Ermon 2017, "InfoVAE: information maximizing variational
autoencoders"): the ELBO's KL term traded against a divergence D between the aggregate posterior
q(z) = E_p(x)[q(z|x)] and the prior,

    L = E_q[log p(x|z)] - (1 - alpha) KL(q(z|x) || p(z)) - (alpha + lambda - 1) D(q(z) || p(z)),

with D the maximum mean discrepancy (``mmd``): the MMD-VAE. The paper's MNIST setting is
alpha = 0, lambda = 1000 (the ELBO plus 999 MMD^2); alpha = 1 drops the KL term (the authors'
tutorial). Their code's kernel is the RBF exp(-||x - y||^2 / d^2) for d latent dimensions
(C = d^2; the default here is mmd's 2 d). MMD^2 is estimated without bias between the
minibatch's samples z_m ~ q(z|x_m) (samples of q(z)) and as many samples of p(z) (drawn, so the
prior's own parameters get no gradient from it). ``alpha = 0, lambda = 1`` is the ELBO.
``kl_schedule`` scales the KL term; the bound logged is the true ELBO."""

from __future__ import annotations

from typing import Annotated

from torch import Tensor

from vae_lightning.args import PositiveFloat, Range, checked, fail
from vae_lightning.parts import Bound, Parts

from .base import Objective
from .kl_schedule import KLSchedule
from .mmd import Kernel, default_bandwidth, mmd2
from .regularized import Regularized, sample_bound


class InfoVAE(Regularized, Objective):
    """InfoVAE with the MMD divergence: ``alpha`` and ``lam`` (the paper's lambda), the
    ``kernel`` (``rbf`` or ``imq``) and its ``bandwidth`` C (null: 2 x latent). Logs
    ``train/mmd``, the MMD^2 estimate."""

    min_batch = 2  # the MMD^2 estimate's pairs of points (mmd.mmd2)
    checkpoint = "last"  # the InfoVAE objective, not the ELBO, is trained

    @checked
    def __init__(self, alpha: Annotated[float, Range(le=1)] = 0.0, lam: PositiveFloat = 1000.0,
                 kernel: Kernel = "rbf", bandwidth: PositiveFloat | None = None,
                 kl_schedule: KLSchedule | None = None) -> None:
        if alpha + lam < 1:
            fail(self, "lam", lam, f"at least 1 - alpha = {1 - alpha}: the MMD's weight "
                 "alpha + lambda - 1 cannot be negative")
        self.alpha, self.lam, self.kernel, self.bandwidth = alpha, lam, kernel, bandwidth
        self.kl_schedule = kl_schedule

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        z, _, _, bound = sample_bound(model, x)
        bandwidth = self.bandwidth or default_bandwidth(z.shape[-1])
        mmd = mmd2(z, model.prior.sample(len(z)), self.kernel, bandwidth)
        self.report(mmd=mmd)
        kl_weight = (1 - self.alpha) * self.kl_factor(model.global_step)
        divergence = (self.alpha + self.lam - 1) * mmd
        return -(bound.recon - kl_weight * bound.kl).mean() + divergence, bound
