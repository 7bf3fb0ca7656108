"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the baseline of the paper's Fig. 2.

The same encoder q_phi(z|x) (the recognition model) and decoder p_theta(x|z) as AEVB, trained by
two phases on every minibatch, each updating one of the two networks:

- wake: z ~ q_phi(z|x) for the real x, held fixed; the generative model (decoder, and a learnable
  prior) maximises log p_theta(x, z). With q fixed this is the ELBO as a function of theta, so the
  wake loss is -ELBO computed with the encoder's output detached;
- sleep: a fantasy z ~ p(z), x ~ p_theta(x|z), held fixed; the encoder maximises log q_phi(z|x).

The two losses reach disjoint parameters, so one optimizer step on their sum applies both phases.
Unlike AEVB, no gradient flows through the sample z: the encoder never sees the bound. The logged
``*/elbo`` is the same ELBO estimate as AEVB's (``VAE.bound``), so the curves compare.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vae_lightning.module import VAE
from vae_lightning.objectives import Bound, elbo
from vae_lightning.priors import VampPrior


class WakeSleep(VAE):
    """Wake-sleep with the encoder, decoder and prior of ``VAE`` (same constructor)."""

    method = "wake_sleep"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        h = self.hparams
        unsupported = {
            "objective": (h.objective, "elbo"),
            "beta": (h.beta, 1.0),
            "kl_warmup_steps": (h.kl_warmup_steps, 0),
        }
        for key, (value, accepted) in unsupported.items():
            if value != accepted:
                raise ValueError(
                    f"model.{key}={value!r} is not used by wake-sleep, whose wake and sleep "
                    f"losses are fixed by the algorithm; leave model.{key}={accepted!r}."
                )
        if isinstance(self.prior, VampPrior):
            raise ValueError(
                "prior=vamp cannot be trained by wake-sleep: the VampPrior is made of the "
                "encoder's posteriors, so the wake phase (generative model only) would update the "
                "encoder too. Use prior=normal or prior=mog."
            )

    def wake_loss(self, x: Tensor) -> tuple[Tensor, Bound]:
        """-E_q[log p(x, z)] for z ~ q(z|x) with q held fixed (gradients reach the decoder and
        the prior only), and the ELBO terms of the same samples."""
        with torch.no_grad():
            q = self.encoder(x)
        bound = elbo(
            x, q, self.decoder, self.prior, self.hparams.n_samples, self.hparams.kl == "analytic"
        )
        return -bound.elbo.mean(), bound

    def sleep_loss(self, n: int) -> Tensor:
        """-log q(z|x) for n fantasies z ~ p(z), x ~ p(x|z) (gradients reach the encoder only)."""
        with torch.no_grad():
            z = self.prior.sample(n)
            x = self.decoder(z).sample()
        return -self.encoder(x).log_prob(z).mean()

    def training_loss(self, x: Tensor) -> tuple[Tensor, Bound]:
        wake, bound = self.wake_loss(x)
        return wake + self.sleep_loss(x.shape[0]), bound
