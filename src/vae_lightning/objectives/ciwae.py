"""The combination importance-weighted bound, CIWAE (Rainforth et al. 2018, "Tighter variational
bounds are not necessarily better", Sec. 4): a convex combination of the ELBO and the IWAE bound
on the same K samples z_k ~ q(z|x),

    CIWAE_beta(x) = beta (1/K) sum_k log w_k + (1 - beta) log (1/K) sum_k w_k,

w_k = p(x, z_k) / q(z_k|x): beta = 1 is the ELBO (estimator A, L = K), beta = 0 IWAE; it lies
between them. The ELBO's part keeps the encoder's gradient signal from vanishing as K grows."""

from __future__ import annotations

from typing import Annotated

from torch import Tensor

from vae_lightning.args import PositiveInt, Range, checked
from vae_lightning.parts import Bound, Parts

from .base import Objective, draw, iw_bound


class CIWAE(Objective):
    """beta x ELBO + (1 - beta) x IWAE over the same ``k`` samples; the training bound logged is
    their ELBO (estimator A)."""

    checkpoint = "last"  # the CIWAE bound, not the ELBO, is trained

    @checked
    def __init__(self, k: PositiveInt = 64, beta: Annotated[float, Range(ge=0, le=1)] = 0.5
                 ) -> None:
        self.k, self.beta = k, beta

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        samples = draw(model, x, model.encoder(x), model.prior.distribution(), self.k)
        log_w = samples.log_w
        bound = self.beta * log_w.mean(0) + (1 - self.beta) * iw_bound(log_w)
        return -bound.mean(), samples.bound()
