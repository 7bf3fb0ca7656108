"""An inverse-autoregressive-flow posterior (Kingma, Salimans, Jozefowicz, Chen, Sutskever &
Welling 2016): the encoder's network outputs mu, log sigma^2 and a context h (``context``
values); z_0 ~ N(mu, diag sigma^2) goes through K steps

    [m, s] = MADE_k(z_{k-1}, h),   sigma = sigmoid(s + 2),   z_k = sigma z_{k-1} + (1 - sigma) m,

the paper's numerically stable, gated form (its forget-gate bias starts sigma near 0.88; s is
bounded below, smoothly, so that the inverse's division by sigma stays finite). m_i
and s_i depend on z_{<i} only (``posteriors.made``, with the order reversed from step to step),
so each step's Jacobian is triangular with diagonal sigma and

    log q(z_K|x) = log N(z_0; mu, diag sigma^2) - sum_k sum_i log sigma_{k,i}.

The steps are Pyro's ``AffineAutoregressive`` (stable form) around our MADEs: Pyro's algebra for
the map, its log-determinant and its inverse. The MADEs' weights are the family's own parameters
(the family is an ``nn.Module``, registered by the encoder as ``encoder.family``), shared by all
data points; only h, mu and sigma are per data point. The family needs the latent size when it
is built (its networks' sizes), so the config passes ``model.latent`` to it.

What it offers (``parts.FEATURES``): reparameterized samples; a finite second moment (each step
moves z by a Lipschitz function of z); and a density at any z: a step's inverse is computed one
dimension at a time (z_{k-1,i} from z_{k,i} and the z_{k-1,<i} already found), exact but D
network passes per step, so DReG, wake-sleep and the VampPrior work with it, at that cost. A q
held fixed by DReG (built from parameters that carry no gradient: ``params.detach()``) holds the
MADEs' weights fixed too, so that all of q is held fixed, as DReG requires.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn import functional as F

from vae_lightning.args import PositiveInt, checked, fail

from .flow import Flow
from .made import MADE

GATE_BIAS = 2.0  # s + GATE_BIAS: the gate sigma starts near sigmoid(2) = 0.88 (the paper: +1 or +2)
# A smooth lower bound on s: the identity to within 1e-3 above -13, never below -20, so a gate is
# at least sigmoid(-18) and the inverse (which divides by it) stays finite in float32.
S_MIN = -20.0


def _bounded(made: MADE, h: Tensor, fixed: bool, z: Tensor) -> tuple[Tensor, Tensor]:
    """The MADE's (m, s) for z and the context h, with s bounded below (``S_MIN``)."""
    m, s = made(z, h, fixed)
    return m, S_MIN + F.softplus(s - S_MIN)


@functools.cache
def _step() -> type:
    """Pyro's ``AffineAutoregressive`` in its stable (gated) form, whose inverse first broadcasts
    its input against the data points' batch (Pyro's inverse assumes the shapes equal: a
    mixture of q's, as the VampPrior's, scores z of batch shape [..., 1] under q of [K])."""
    from pyro.distributions.transforms.affine_autoregressive import AffineAutoregressive

    class GatedStep(AffineAutoregressive):
        def __init__(self, network: partial, batch_shape: torch.Size) -> None:
            super().__init__(network, stable=True, sigmoid_bias=GATE_BIAS)
            self.batch_shape = batch_shape

        def _inverse_stable(self, y: Tensor) -> Tensor:
            shape = torch.broadcast_shapes(y.shape[:-1], self.batch_shape)
            return super()._inverse_stable(y.expand(*shape, y.shape[-1]))

    return GatedStep


class IAF(Flow, nn.Module):
    """q(z|x) = the Gaussian base pushed through ``length`` IAF steps (see the module), each a
    MADE with ``hidden`` ELU layers over z and the encoder's context h of ``context`` values."""

    features = frozenset({"rsample", "density", "finite_variance"})

    @checked
    def __init__(self, latent: PositiveInt, length: PositiveInt = 2,
                 hidden: Sequence[PositiveInt] = (320,), context: PositiveInt = 320) -> None:
        nn.Module.__init__(self)
        if not hidden:
            fail(self, "hidden", list(hidden), "at least one hidden layer (the context h enters "
                 "the first)")
        self.latent, self.length, self.hidden, self.context = latent, length, list(hidden), context
        self.steps = nn.ModuleList(MADE(latent, self.hidden, context, reverse=k % 2 == 1)
                                   for k in range(length))

    def n_params(self, latent: int) -> int:
        if latent != self.latent:
            raise ValueError(f"{self!r} was built for latent={self.latent} and is asked for "
                             f"latent={latent}: give it the model's latent size.")
        return 2 * latent + self.context

    def min_latent(self) -> int:
        return self.latent

    def __call__(self, params: Tensor) -> Distribution:
        fixed = not params.requires_grad  # DReG's q held fixed: the weights too
        h = params[..., 2 * self.latent:]
        transforms = []
        for made in self.steps:
            network = partial(_bounded, made, h, fixed)
            network.permutation = made.permutation  # what Pyro's inverse iterates over
            transforms.append(_step()(network, h.shape[:-1]))
        return self.flow(params, self.latent, transforms)

    def __repr__(self) -> str:
        return (f"IAF(latent={self.latent}, length={self.length}, hidden={self.hidden}, "
                f"context={self.context})")
