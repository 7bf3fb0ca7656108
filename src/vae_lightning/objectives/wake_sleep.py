"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the baseline of the paper's Fig. 2.

The same encoder q_phi(z|x) (the recognition model) and decoder p_theta(x|z) as AEVB, trained by
two phases on every minibatch, each updating one of the two networks:

- wake: z ~ q_phi(z|x) for the real x, held fixed; the generative model (decoder, and a learnable
  prior) maximises log p_theta(x, z). With q fixed this is the ELBO as a function of theta, so the
  wake loss is -ELBO computed with the encoder's output detached;
- sleep: a fantasy z ~ p(z), x ~ p_theta(x|z), held fixed; the encoder maximises log q_phi(z|x).

The two losses reach disjoint parameters, so one optimizer step on their sum applies both phases.
Unlike AEVB, no gradient flows through the sample z: the encoder never sees the bound. The logged
bound is the same ELBO estimate as AEVB's, so the curves compare.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.args import PositiveInt, checked
from vae_lightning.parts import Parts, capturable_sample

from .base import KL, Bound, Objective, elbo_estimate, q_reads_generative


class WakeSleep(Objective):
    """Wake-sleep; ``n_samples`` and ``kl`` choose the ELBO estimator of the wake phase and of
    the logged bound, as for ``ELBO``."""

    method = "wake_sleep"
    # The sleep phase scores q(z|x) at fantasies z ~ p(z): a density anywhere, no gradient
    # through z.
    requires = frozenset({"density"})

    @checked
    def __init__(self, n_samples: PositiveInt = 1, kl: KL = "auto") -> None:
        self.n_samples, self.kl = n_samples, kl

    def bound(self, model: Parts, x: Tensor) -> Bound:
        return elbo_estimate(model, x, self.n_samples, self.kl)

    def wake_loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        """-E_q[log p(x, z)] for z ~ q(z|x) with q held fixed (gradients reach the decoder and
        the prior only), and the ELBO terms of the same samples."""
        with torch.no_grad():
            q = model.encoder(x)
        bound = elbo_estimate(model, x, self.n_samples, self.kl, q=q)
        return -bound.elbo.mean(), bound

    def sleep_loss(self, model: Parts, n: int) -> Tensor:
        """-log q(z|x) for n fantasies z ~ p(z), x ~ p(x|z) (gradients reach the encoder only)."""
        with torch.no_grad():
            z = model.prior.sample(n)
            x = capturable_sample(model.decoder(z))  # a CUDA graph captures it (Normal's too)
        return -model.encoder(x).log_prob(z).mean()

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        wake, bound = self.wake_loss(model, x)
        return wake + self.sleep_loss(model, x.shape[0]), bound

    def check(self, model: Parts) -> None:
        """The wake phase trains the generative model alone: a prior whose density depends on
        the encoder (the VampPrior) would let it update the encoder too."""
        z = torch.zeros(1, model.latent, device=model.device)
        with torch.enable_grad():
            log_p = model.prior.log_prob(z).sum()
            encoder = [p for p in model.encoder.parameters() if p.requires_grad]
            reached = log_p.requires_grad and any(
                g is not None for g in torch.autograd.grad(log_p, encoder, allow_unused=True))
        if reached:
            raise ValueError(
                f"prior {type(model.prior).__name__} cannot be trained by wake-sleep: its density "
                "depends on the encoder, so the wake phase (generative model only) would update "
                "the encoder too. Use model/prior=normal or model/prior=mog.")
        # The sleep phase trains the recognition model alone: a q built with the generative
        # model's networks (the Ladder VAE's) would let it update them too.
        if q_reads_generative(model):
            raise ValueError(
                f"posterior {model.encoder.posterior!r} cannot be trained by wake-sleep: its "
                "density depends on the generative model (the Ladder VAE infers with the prior's "
                "networks), so the sleep phase (recognition model only) would update the "
                "generative model too. Use model=hierarchy (bottom-up inference).")
