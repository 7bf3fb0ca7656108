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

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.distributions import Independent

from vae_lightning.args import PositiveInt, checked

from .base import Bound, Objective, Samples, iw_bound

if TYPE_CHECKING:
    from vae_lightning.module import VAE


class DReG(Objective):
    """The k-sample importance-weighted bound with doubly-reparameterized encoder gradients."""

    checkpoint = "last"  # the final model: the IW bound, not the ELBO, is trained

    @checked
    def __init__(self, k: PositiveInt = 5) -> None:
        self.k = k

    def loss(self, model: VAE, x: Tensor) -> tuple[Tensor, Bound]:
        q = model.encoder(x)
        z = q.rsample((self.k,))
        fixed_q = _detached(q)
        samples = Samples(model.decoder(z).log_prob(x), model.prior.log_prob(z),
                          fixed_q.log_prob(z))
        log_w = samples.log_w
        if torch.is_grad_enabled() and z.requires_grad:
            weights = torch.softmax(log_w.detach(), dim=0)
            z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
        return -iw_bound(log_w).mean(), samples.bound()


def _detached(q: Independent) -> Independent:
    """q with its parameters cut from the graph: the same density, reached only through z."""
    base = q.base_dist
    params = {name: getattr(base, name).detach() for name in base.arg_constraints
              if name in vars(base)}
    return Independent(type(base)(**params, validate_args=False),
                       q.reinterpreted_batch_ndims)
