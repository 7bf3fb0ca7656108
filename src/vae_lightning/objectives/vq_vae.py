"""The VQ-VAE objective (van den Oord et al. 2017, eq. 3), per data point:

    L = -log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2,

e the chosen codebook vectors z_q(x), sg the stop-gradient: the reconstruction term trains the
decoder and, through the straight-through copy of z_q's gradient (``posteriors.vq``), the
encoder; the codebook loss trains the codebook only (left out with the quantizer's ``ema``
update, whose codebook is no parameter); the commitment loss, weighted by ``beta`` (0.25, the
paper's), trains the encoder only, keeping z_e near the code it chose. Squared distances are
summed over the code map, as the log-likelihood over the pixels.

The bound logged as ``*/elbo`` is log p(x) >= E_q[log p(x|z)] - KL(q || p) with q one-hot
(log q = 0) and p the model's prior over code maps: with ``priors.codes``' uniform prior,
recon - P log K (P code positions, K codes); the bits per dimension logged beside it are that
bound's. A prior over codes fitted after training (``vae-sample sampler=pixelcnn``) tightens it
to recon - (-log p(k(x))), its negative log-likelihood of the code map. Logs ``train/codebook``,
``train/commitment`` (minibatch means) and ``train/perplexity``, exp of the entropy of the
minibatch's code frequencies (K when every code is used equally, 1 when one code is used)."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import NonNegativeFloat, checked
from vae_lightning.parts import Bound, Parts
from vae_lightning.posteriors.vq import Quantized, VectorQuantizer

from .base import Objective
from .regularized import Regularized


class VQVAE(Regularized, Objective):
    """The VQ-VAE loss with commitment weight ``beta``; needs the ``vq`` posterior."""

    requires: frozenset[str] = frozenset()

    @checked
    def __init__(self, beta: NonNegativeFloat = 0.25) -> None:
        self.beta = beta

    def terms(self, model: Parts, x: Tensor) -> tuple[Quantized, Bound]:
        """q(z|x) and the bound's terms at its code map (straight-through z)."""
        q = model.encoder(x)
        z = q.rsample()
        recon = model.decoder(z).log_prob(x)
        return q, Bound(recon, q.log_prob(z) - model.prior.log_prob(z))

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        q, bound = self.terms(model, x)
        codebook, commitment = vq_losses(q)
        self.report(codebook=codebook, commitment=commitment,
                    perplexity=perplexity(q.codes, model.encoder.posterior.codes))
        loss = -bound.recon + self.beta * commitment
        if not model.encoder.posterior.ema:
            loss = loss + codebook
        return loss.mean(), bound

    def bound(self, model: Parts, x: Tensor) -> Bound:
        return self.terms(model, x)[1]

    def check(self, model: Parts) -> None:
        family = model.encoder.posterior
        if not isinstance(family, VectorQuantizer):
            raise ValueError(f"the objective VQVAE needs a vector-quantized posterior "
                             f"(model/posterior=vq), not {family!r}; use model=vq_vae")


def vq_losses(q: Quantized) -> tuple[Tensor, Tensor]:
    """Per data point: the codebook loss ||sg[z_e] - z_q||^2, whose gradient reaches the codebook
    only, and the commitment loss ||z_e - sg[z_q]||^2, whose gradient reaches the encoder only."""
    return ((q.z_e.detach() - q.z_q).pow(2).sum(-1), (q.z_e - q.z_q.detach()).pow(2).sum(-1))


def perplexity(codes: Tensor, k: int) -> Tensor:
    """exp(H(f)), f the frequencies of the K codes in ``codes``."""
    f = codes.flatten().bincount(minlength=k).float() / codes.numel()
    return (-(f * f.clamp_min(1e-12).log()).sum()).exp()
