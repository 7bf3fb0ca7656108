"""The multiply importance-weighted bound, MIWAE (Rainforth, Kosiorek, Le, Maddison, Igl, Wood &
Teh 2018, "Tighter variational bounds are not necessarily better", Sec. 4):

    MIWAE_{M,K}(x) = (1/M) sum_m log (1/K) sum_k w_mk,   w_mk = p(x, z_mk) / q(z_mk|x),

the mean of M independent K-sample IWAE bounds over M K samples z_mk ~ q(z|x). M = 1 is IWAE,
K = 1 the ELBO (estimator A with L = M). For the same samples
ELBO <= MIWAE_{M,K} <= IWAE_{MK} (Jensen). Its encoder gradient's signal-to-noise ratio does not
vanish as K grows, as IWAE's does (for fixed M K, a smaller K helps the encoder)."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import PositiveInt, checked
from vae_lightning.parts import Bound, Parts

from .base import Objective, draw, iw_bound


def miwae_bound(log_w: Tensor, m: int) -> Tensor:
    """MIWAE_{M,K} per data point from log-weights ``[M K, batch]`` (consecutive groups of K)."""
    return iw_bound(log_w.unflatten(0, (m, -1)).transpose(0, 1)).mean(0)


class MIWAE(Objective):
    """The mean of ``m`` IWAE bounds of ``k`` samples each; the training bound logged is the ELBO
    of the same M K samples (estimator A)."""

    checkpoint = "last"  # the MIWAE bound, not the ELBO, is trained

    @checked
    def __init__(self, m: PositiveInt = 8, k: PositiveInt = 8) -> None:
        self.m, self.k = m, k

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        samples = draw(model, x, model.encoder(x), model.prior.distribution(), self.m * self.k)
        return -miwae_bound(samples.log_w, self.m).mean(), samples.bound()
