"""The partially importance-weighted autoencoder, PIWAE (Rainforth et al. 2018, "Tighter
variational bounds are not necessarily better", Sec. 4): from the same M K samples
z_mk ~ q(z|x), the generative model (decoder and prior, theta) climbs the IWAE bound of all of
them and the encoder (phi) the MIWAE bound,

    Delta theta = grad_theta IWAE_{MK}(x),   Delta phi = grad_phi MIWAE_{M,K}(x),

since a tighter bound helps theta but starves phi's gradient of signal. One loss gives both: with
a = log w at the samples and a_theta the same log-weights with z and log q(z|x) held fixed
(a second decoder pass at the detached samples, which reaches theta only),

    loss = -(IWAE(a_theta) + MIWAE(a) - MIWAE(a_theta)),

whose value is IWAE_{MK}: theta's gradient of MIWAE(a) - MIWAE(a_theta) is zero (a and a_theta
depend on theta alike at the same z), and a_theta does not depend on phi, so theta follows
IWAE_{MK} and phi follows MIWAE_{M,K}. A prior that encodes pseudo-inputs with the encoder (the
VampPrior) counts as part of theta: those weights get IWAE's gradient through p(z)."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import PositiveInt, checked
from vae_lightning.parts import Bound, Parts, Samples, scored_sample

from .base import Objective, iw_bound, q_reads_generative
from .miwae import miwae_bound


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
        samples = Samples(model.decoder(z).log_prob(x), p.log_prob(z), log_qz)
        fixed = z.detach()
        log_w_theta = model.decoder(fixed).log_prob(x) + p.log_prob(fixed) - log_qz.detach()
        log_w = samples.log_w
        bound = (iw_bound(log_w_theta) + miwae_bound(log_w, self.m)
                 - miwae_bound(log_w_theta, self.m))
        return -bound.mean(), samples.bound()

    def check(self, model: Parts) -> None:
        """The second pass at the detached samples reaches theta through the decoder and the
        prior only: a q built with the generative model's networks (the Ladder VAE's top-down
        ones) would give those theta MIWAE's gradient through q, not IWAE's."""
        if q_reads_generative(model):
            raise ValueError(
                f"posterior {model.encoder.posterior!r} cannot be trained by PIWAE: its density "
                "depends on the generative model (the Ladder VAE infers with the prior's "
                "networks), so the prior's networks would get MIWAE's gradient through q where "
                "PIWAE gives them IWAE's. Use model=hierarchy (bottom-up inference), or "
                "model/objective=miwae or iwae.")
