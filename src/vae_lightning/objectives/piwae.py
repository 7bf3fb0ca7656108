"""The partially importance-weighted autoencoder, PIWAE (Rainforth et al. 2018, "Tighter
variational bounds are not necessarily better", Sec. 4): from the same M K samples
z_mk ~ q(z|x), the generative model (decoder and prior, theta) climbs the IWAE bound of all of
them and the encoder (phi) the MIWAE bound,

    Delta theta = grad_theta IWAE_{MK}(x),   Delta phi = grad_phi MIWAE_{M,K}(x),

since a tighter bound helps theta but starves phi's gradient of signal. One forward pass and one
backward pass give both. With a_mk = log w at the samples, the loss is -IWAE_{MK}(a), whose
gradient reaches a_mk with IWAE's weight w_mk / sum_all w, where MIWAE's is
(1/M) w_mk / sum_{k'} w_mk'; their ratio is the same for every sample of group m,

    r_m = (1/M) sum_all w / sum_{k'} w_mk' = exp(logsumexp_all a - logsumexp_k' a_mk') / M,

so phi's gradient is MIWAE's when the gradient that reaches phi from each sample is multiplied
by its group's r_m: at z where the decoder and the prior read it, and at log q(z|x) (hooks on
both, identities in the forward pass), the only ways from a to phi. Theta (decoder and prior)
is reached from a directly, with IWAE's weights. A prior that encodes pseudo-inputs with the
encoder (the VampPrior) counts as part of theta: those weights get IWAE's gradient through p(z).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.args import PositiveInt, checked
from vae_lightning.parts import Bound, Parts, Samples, scored_sample

from .base import Objective, iw_bound


class PIWAE(Objective):
    """The decoder and prior on IWAE with ``m`` x ``k`` samples, the encoder on MIWAE (``m``
    bounds of ``k``); the training bound logged is the ELBO of the same samples (estimator A)."""

    checkpoint = "last"  # the IWAE and MIWAE bounds, not the ELBO, are trained

    @checked
    def __init__(self, m: PositiveInt = 8, k: PositiveInt = 8) -> None:
        self.m, self.k = m, k

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        q, p = model.encoder(x), model.prior.distribution()
        z, log_qz = scored_sample(q, (self.m * self.k,))
        read, log_q = z.view_as(z), log_qz.view_as(log_qz)  # where phi's gradient is rescaled
        samples = Samples(model.decoder(read).log_prob(x), p.log_prob(read), log_q)
        log_w = samples.log_w
        with torch.no_grad():
            groups = log_w.unflatten(0, (self.m, self.k))  # consecutive groups of K, as MIWAE's
            r = (torch.logsumexp(log_w, 0) - torch.logsumexp(groups, 1)).exp() / self.m
            r = r.repeat_interleave(self.k, 0)  # [M K, batch]
        if read.requires_grad:  # (not where nothing upstream is trained)
            read.register_hook(lambda grad: grad * r.view(r.shape + (1,) * (grad.dim() - 2)))
        if log_q.requires_grad:
            log_q.register_hook(lambda grad: grad * r)
        return -iw_bound(log_w).mean(), samples.bound()
