"""The VQ-VAE's training prior (van den Oord et al. 2017, Sec. 3.1): uniform over the K^P code
maps of the model's vector quantizer (``posteriors.vq``), so that with q(k|x) one-hot
KL(q || p) = log q - log p = P log K, a constant, and the bound is E_q[log p(x|z_q)] - P log K.
After training, an autoregressive prior fitted to the code maps (``vae-sample
sampler=pixelcnn``, ``pixelcnn``) replaces it for sampling; its negative log-likelihood of a code
map takes the place of P log K in the bound."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_lightning.posteriors.vq import VectorQuantizer
from vae_lightning.priors import Prior


class CodeMaps(Distribution):
    """Uniform over the code maps of ``quantizer`` with P = ``positions``: a z is read as the
    code map of its nearest codebook vectors (the only points the quantizer's q puts mass on),
    so log p(z) = -P log K for every z."""

    arg_constraints: dict = {}

    def __init__(self, quantizer: VectorQuantizer, positions: int) -> None:
        self.quantizer, self.positions = quantizer, positions
        latent = positions * quantizer.code_dim
        super().__init__(torch.Size(), torch.Size([latent]), validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return z.new_full(z.shape[:-1], -self.positions * math.log(self.quantizer.codes))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        codebook = self.quantizer.codebook
        codes = torch.randint(self.quantizer.codes, (*sample_shape, self.positions),
                              device=codebook.device)
        with torch.no_grad():
            return self.quantizer.lookup(codes)


class UniformCodes(Prior):
    """p(z) uniform over the code maps of the model's quantizer, which ``bind`` hands it (a q of
    another family is refused: this prior has no density over a continuum)."""

    features: frozenset[str] = frozenset({"codebook"})  # parts.CONFINED
    requires: frozenset[str] = frozenset()
    bound_note = ("under the uniform training prior over code maps (P log K nats for the codes, "
                  "however well the codes are used): eval.fitted_prior=pixelcnn gives the bound "
                  "under a prior fitted to them, the one to compare with other models")

    def __init__(self, latent: int) -> None:
        super().__init__(latent)
        self._quantizer: list[VectorQuantizer] = []  # a plain list: not registered twice

    def bind(self, encoder: nn.Module) -> None:
        family = encoder.posterior
        if not isinstance(family, VectorQuantizer):
            raise ValueError(f"the prior UniformCodes needs the posterior to have a codebook "
                             f"(model/posterior=vq), which the posterior {family!r} does not "
                             "have; use model=vq_vae")
        self._quantizer[:] = [family]

    def distribution(self) -> Distribution:
        if not self._quantizer:
            raise RuntimeError("UniformCodes.bind(encoder) was not called: the prior is over "
                               "the encoder's codebook.")
        quantizer = self._quantizer[0]
        return CodeMaps(quantizer, quantizer.positions(self.latent))
