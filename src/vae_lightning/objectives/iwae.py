"""The importance-weighted autoencoder (Burda et al. 2015): minimise the negative
importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i|x) with k samples z_i ~ q(z|x),
a bound on log p(x) that tightens as k grows (k = 1 is the ELBO by estimator A)."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import PositiveInt, checked
from vae_lightning.parts import Parts

from .base import Bound, Objective, draw, iw_bound


class IWAE(Objective):
    """The k-sample importance-weighted bound; the training bound logged is the ELBO of the same
    k samples (estimator A), the evaluation bound the model's ELBO (estimator B where it exists)."""

    checkpoint = "last"  # the final model: the IW bound, not the ELBO, is trained

    @checked
    def __init__(self, k: PositiveInt = 5) -> None:
        self.k = k

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        samples = draw(model, x, model.encoder(x), model.prior.distribution(), self.k)
        return -iw_bound(samples.log_w).mean(), samples.bound()
