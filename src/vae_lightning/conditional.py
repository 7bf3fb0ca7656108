"""Conditional VAEs (Sohn, Lee & Yan 2015): q(z|x, y), p(x|z, y) and, optionally, p(z|y) for a
class label y in {0, ..., K-1} served beside each image.

The bound is the ELBO with every term given y,
    log p(x|y) >= E_q(z|x,y)[log p(x|z, y)] - KL(q(z|x, y) || p(z|y)),
so every objective, the importance-weighted estimate and ``vae-eval`` apply unchanged: they
score x given the label, and report log p(x|y) (a conditional likelihood, not log p(x)).

The parts take y through one mechanism: a part that depends on the label implements
``parts.Conditional`` (``given(y)``), and the model hands each batch's labels to all of them around
every use of the parts (``module.VAE.given``), so no objective or metric changes. Here:

- ``Conditioned``: wraps any network of the ``nets`` group: the one-hot label is concatenated to
  the network's flattened input (the CVAE's "x concatenated with y", and "z with y" for the
  decoder), so the wrapped network sees ``prod(in_shape) + K`` inputs.
- ``ClassNormal``: p(z|y) = N(mu_y, diag sigma_y^2), a learned Gaussian per class (the CVAE's
  "conditional prior"); the KL to a diagonal Gaussian q stays analytic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.args import PositiveInt, checked
from vae_lightning.errors import ConfigError
from vae_lightning.priors import Prior


class _Labels:
    """The labels a conditional part (``parts.Conditional``) was last given, checked: integer
    classes in [0, ``classes``), or -1 for a point whose label is hidden."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self._y: Tensor | None = None

    def given(self, y: Tensor | None) -> None:
        if y is not None:
            if y.dtype.is_floating_point or y.dim() != 1:
                raise ConfigError(f"a conditional model takes integer class labels [batch]; got "
                                  f"{y.dtype} of shape {list(y.shape)}.")
            if len(y) and (int(y.min()) < -1 or int(y.max()) >= self.classes):
                raise ConfigError(
                    f"a label {int(y.min()) if int(y.min()) < -1 else int(y.max())} is outside "
                    f"0..{self.classes - 1}: the model is conditional on {self.classes} classes "
                    f"(model.classes); the data's labels must be among them.")
        self._y = None if y is None else y.long()

    def labels(self) -> Tensor:
        """The labels given; -1 (a hidden label) is kept until used, then refused: only an
        objective that sums over the classes (model/objective=m2) trains on such points."""
        if self._y is None:
            raise ConfigError("this model is conditional on a class label: give the labels "
                              "(e.g. model.sample(n, y=...), vae-sample y=3).")
        if len(self._y) and int(self._y.min()) < 0:
            raise ConfigError("some points have no label (-1): a conditional model needs each "
                              "point's label, or an objective that sums over the classes of "
                              "the unlabelled ones (model/objective=m2).")
        return self._y


class Conditioned(nn.Module):
    """``net`` (a ``nets`` factory called with the input and output shapes) given the one-hot
    label: input ``[..., *in_shape]`` flattened and concatenated with one-hot(y), ``[...,
    prod(in_shape) + classes]``, into the network built for that size. The label is broadcast
    over any sample dimensions in front of the batch (z of shape ``[L, batch, latent]``)."""

    @checked
    def __init__(self, in_shape: Sequence[PositiveInt], out_shape: Sequence[PositiveInt],
                 net: Callable[..., nn.Module], classes: PositiveInt) -> None:
        super().__init__()
        self.labels, self.classes = _Labels(classes), classes
        self.in_dims = len(in_shape)
        self.net = net((math.prod(in_shape) + classes,), tuple(out_shape))

    def given(self, y: Tensor | None) -> None:
        self.labels.given(y)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(-self.in_dims)
        y = nn.functional.one_hot(self.labels.labels(), self.classes).to(flat.dtype)
        if y.shape[0] != (flat.shape[-2] if flat.dim() > 1 else 1):
            raise ConfigError(f"{len(y)} labels given for a batch of {flat.shape[-2]}: give one "
                              "label per data point.")
        if flat.dim() == 1:  # one data point without a batch dimension
            y = y[0]
        return self.net(torch.cat([flat, y.expand(*flat.shape[:-1], self.classes)], -1))


class ClassNormal(Prior):
    """p(z|y) = N(z; mu_y, diag sigma_y^2), one learned mean and log-scale per class (zero and
    one at the start: N(0, I) for every class until training moves them)."""

    features = frozenset({"factorized"})

    @checked
    def __init__(self, latent: PositiveInt, classes: PositiveInt) -> None:
        super().__init__(latent)
        self.labels = _Labels(classes)
        self.classes = classes
        self.loc = nn.Parameter(torch.zeros(classes, latent))
        self.log_scale = nn.Parameter(torch.zeros(classes, latent))

    def given(self, y: Tensor | None) -> None:
        self.labels.given(y)

    def distribution(self) -> Distribution:
        y = self.labels.labels()
        return Independent(Normal(self.loc[y], self.log_scale[y].exp()), 1)

    def sample(self, n: int) -> Tensor:
        q = self.distribution()
        if q.batch_shape[0] != n:
            raise ConfigError(f"{q.batch_shape[0]} labels given for {n} samples: give one label "
                              "per sample.")
        return q.sample()
