"""What the objectives that add terms to the ELBO's (or replace its KL) share: one
reparameterized sample of z per data point with the true ELBO's terms at it, the KL term's
weight (a constant times a ``kl_schedule``), and the named terms a step reports to the loggers.

The bound they return is the true ELBO (beta = 1): E_q[log p(x|z)] at the sample and KL(q || p)
analytic where torch.distributions has the pair, else log q(z|x) - log p(z) at the same sample
(estimators B and A); so ``*/elbo`` stays comparable in nats whatever the objective trains."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from torch.distributions import Distribution

from vae_lightning.parts import Bound, Parts, scored_sample

from .base import closed_form_kl
from .kl_schedule import KLSchedule


class Sample(NamedTuple):
    """One draw z ~ q(z|x) per data point ``[batch, latent]``, q and p, and the ELBO's terms."""

    z: Tensor
    q: Distribution
    p: Distribution
    bound: Bound


def sample_bound(model: Parts, x: Tensor) -> Sample:
    """z ~ q(z|x) (reparameterized), E_q[log p(x|z)] at z and KL(q || p) (analytic where it
    exists, else the Monte-Carlo log q(z|x) - log p(z) at z)."""
    q, p = model.encoder(x), model.prior.distribution()
    z, log_qz = scored_sample(q)
    kl = closed_form_kl(q, p)
    if kl is None:
        kl = log_qz - p.log_prob(z)
    return Sample(z, q, p, Bound(model.decoder(z).log_prob(x), kl))


class Regularized:
    """The KL weight and the reported terms of an objective: ``kl_factor(step)`` is the
    ``kl_schedule``'s w_t (1 without one); ``logged()`` the named terms of the last ``loss``
    call (minibatch means, detached) that the model logs as ``train/<name>``."""

    kl_schedule: KLSchedule | None = None
    _logged: dict[str, Tensor]

    def kl_factor(self, step: int) -> float:
        return self.kl_schedule(step) if self.kl_schedule is not None else 1.0

    @property
    def step_dependent(self) -> bool:
        """Whether the loss changes with the step (a CUDA graph captures one step's loss)."""
        return self.kl_schedule is not None

    def report(self, **terms: Tensor) -> None:
        """Keep this step's named terms (their minibatch means) for ``logged``."""
        self._logged = {name: value.detach().mean() for name, value in terms.items()}

    def logged(self) -> dict[str, Tensor]:
        return dict(getattr(self, "_logged", {}))

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not k.startswith("_")
                 and k != "training"}  # an nn.Module's own state is not an option
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"
