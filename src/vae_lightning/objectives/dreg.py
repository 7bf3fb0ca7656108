"""Doubly-reparameterized gradients for the importance-weighted bound (DReG; Tucker, Lawson, Gu &
Maddison 2018).

The bound is IWAE's, log (1/k) sum_i w_i. Its gradient for the decoder and prior (theta) is
IWAE's, sum_i w~_i grad log w_i with w~ = softmax(log w). For the encoder (phi), the IWAE
estimator's score-function part (through q's parameters in log q(z_i|x)) has a variance that
grows with k; DReG replaces it by its doubly-reparameterized form, which is unbiased and drops it:

    grad_phi = sum_i w~_i^2 (d log w_i / d z_i) (d z_i / d phi),

with log w_i computed under q's parameters held fixed, so phi is reached through z_i only. Here
the loss is the negative IW bound with q's parameters detached in log q (its value is IWAE's), and
a hook scales the gradient arriving at z_i by w~_i, turning w~_i into w~_i^2 on that path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.args import PositiveInt, checked
from vae_lightning.parts import Parts

from .base import Bound, Objective, Samples, iw_bound


class DReG(Objective):
    """The k-sample importance-weighted bound with doubly-reparameterized encoder gradients."""

    checkpoint = "last"  # the final model: the IW bound, not the ELBO, is trained
    # log q is evaluated at z under q's parameters held fixed: a q built anew from detached
    # parameters, which must have a density wherever z falls (not only at its own samples).
    requires = frozenset({"rsample", "density"})

    @checked
    def __init__(self, k: PositiveInt = 5) -> None:
        self.k = k

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        params = model.encoder.params(x)
        z = model.encoder.posterior(params).rsample((self.k,))
        fixed_q = model.encoder.posterior(params.detach())
        samples = Samples(model.decoder(z).log_prob(x), model.prior.log_prob(z),
                          fixed_q.log_prob(z))
        log_w = samples.log_w
        if torch.is_grad_enabled() and z.requires_grad:
            weights = torch.softmax(log_w.detach(), dim=0)
            z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
        return -iw_bound(log_w).mean(), samples.bound()

