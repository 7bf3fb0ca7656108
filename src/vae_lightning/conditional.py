"""Conditional VAEs (Sohn, Lee & Yan 2015): q(z|x, y), p(x|z, y) and, optionally, p(z|y) for a
condition y served beside each image: a class label in {0, ..., K-1}, or a vector of K numbers
(``data.condition``: e.g. attributes, a pose, a measurement per image).

The bound is the ELBO with every term given y,
    log p(x|y) >= E_q(z|x,y)[log p(x|z, y)] - KL(q(z|x, y) || p(z|y)),
so every objective, the importance-weighted estimate and ``vae-eval`` apply unchanged: they
score x given its condition, and report log p(x|y) (a conditional likelihood, not log p(x)).

The parts take y through one mechanism: a part that depends on it implements
``parts.Conditional`` (``given(y)``), and the model hands each batch's conditions to all of them
around every use of the parts (``module.VAE.given``), so no objective or metric changes. A part
reads y as a vector c(y) of K numbers: one-hot(y) for a class label (integers ``[batch]``), y
itself for a vector condition (floats ``[batch, K]``), so that a label is the vector condition
of its class's unit vector, and K (``model.classes``) is the number of classes or the vector's
length. Here:

- ``Conditioned``: wraps any network of the ``nets`` group: c(y) is concatenated to the
  network's flattened input (the CVAE's "x concatenated with y", and "z with y" for the
  decoder), so the wrapped network sees ``prod(in_shape) + K`` inputs; or, for a convolutional
  encoder (``via: channels``), to the image as K constant channels, so the network sees
  ``(C + K, H, W)`` images and every filter can read the condition at every position.
- ``ClassNormal``: p(z|y) = N(M c(y), diag exp(2 S c(y))), linear in c(y): a learned Gaussian
  per class (mu_y, sigma_y the rows of M and S) for a label (the CVAE's "conditional prior");
  the KL to a diagonal Gaussian q stays analytic.
- ``check_condition``: the data's condition vectors against the model, before training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vae_lightning.args import PositiveInt, checked, fail
from vae_lightning.errors import ConfigError
from vae_lightning.priors import Prior


class _Labels:
    """The conditions a conditional part (``parts.Conditional``) was last given, checked: integer
    classes in [0, ``classes``), or -1 for a point whose label is hidden; or finite float
    vectors of ``classes`` numbers, one row per point."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self._y: Tensor | None = None

    def given(self, y: Tensor | None) -> None:
        if y is not None and y.dtype.is_floating_point:
            if y.dim() != 2 or y.shape[1] != self.classes:
                raise ConfigError(
                    f"a condition vector per point, floats [batch, {self.classes}], is expected "
                    f"(the model is conditional on {self.classes} numbers: model.classes); got "
                    f"{y.dtype} of shape {list(y.shape)}.")
            if not bool(torch.isfinite(y).all()):
                raise ConfigError("a condition vector holds a value that is not finite: give "
                                  "finite numbers.")
        elif y is not None:
            if y.dim() != 1:
                raise ConfigError(f"a conditional model takes integer class labels [batch] "
                                  f"or float condition vectors [batch, {self.classes}]; got "
                                  f"{y.dtype} of shape {list(y.shape)}.")
            if len(y) and (int(y.min()) < -1 or int(y.max()) >= self.classes):
                raise ConfigError(
                    f"a label {int(y.min()) if int(y.min()) < -1 else int(y.max())} is outside "
                    f"0..{self.classes - 1}: the model is conditional on {self.classes} classes "
                    f"(model.classes); the data's labels must be among them.")
            y = y.long()
        self._y = y

    def labels(self) -> Tensor:
        """The labels (or condition vectors) given; -1 (a hidden label) is kept until used, then
        refused: only an objective that sums over the classes (model/objective=m2) trains on
        such points."""
        if self._y is None:
            raise ConfigError("this model is conditional on a class label (or a condition "
                              "vector): give it (e.g. model.sample(n, y=...), vae-sample y=3).")
        if not self._y.dtype.is_floating_point and len(self._y) and int(self._y.min()) < 0:
            raise ConfigError("some points have no label (-1): q(z|x, y) and p(x|z, y) need "
                              "each point's label here. Only model=m2 sums over the classes of "
                              "such points, in training and in vae-eval's bounds; elsewhere "
                              "give each point its label (M2's log_likelihood without y sums "
                              "over the classes).")
        return self._y

    def vector(self, dtype: torch.dtype) -> Tensor:
        """c(y) ``[batch, classes]``: one-hot(y) for labels, y itself for condition vectors."""
        y = self.labels()
        if y.dtype.is_floating_point:
            return y.to(dtype)
        return nn.functional.one_hot(y, self.classes).to(dtype)


class Conditioned(nn.Module):
    """``net`` (a ``nets`` factory called with the input and output shapes) given the condition.
    ``via="flat"``: the input ``[..., *in_shape]`` flattened and concatenated with c(y)
    (one-hot(y) for a label), ``[..., prod(in_shape) + classes]``, into the network built for
    that size. ``via="channels"``: an image input ``[..., C, H, W]`` with c(y) appended as
    ``classes`` constant channels, ``[..., C + classes, H, W]``, into the network built for that
    image (a convolutional encoder). The condition is broadcast over any sample dimensions in
    front of the batch (z of shape ``[L, batch, latent]``)."""

    @checked
    def __init__(self, in_shape: Sequence[PositiveInt], out_shape: Sequence[PositiveInt],
                 net: Callable[..., nn.Module], classes: PositiveInt,
                 via: Literal["flat", "channels"] = "flat") -> None:
        super().__init__()
        self.labels, self.classes = _Labels(classes), classes
        self.in_dims, self.as_channels = len(in_shape), via == "channels"
        if self.as_channels:
            if len(in_shape) != 3:
                fail(self, "via", via, f"the condition as channels needs an image input "
                     f"[C, H, W], and this network reads {list(in_shape)}: use via: flat")
            self.net = net((in_shape[0] + classes, *in_shape[1:]), tuple(out_shape))
        else:
            self.net = net((math.prod(in_shape) + classes,), tuple(out_shape))
        # A network that reads log(1 + x) (``nets.MLP``'s log_input, for counts) reads it of
        # the data point only: c(y) is given as it is (a condition vector below -1 was NaN).
        self.log_input = bool(getattr(self.net, "log_input", False))
        if self.log_input:
            self.net.log_input = False

    def given(self, y: Tensor | None) -> None:
        self.labels.given(y)

    def forward(self, x: Tensor) -> Tensor:
        data = x.flatten(-self.in_dims) if not self.as_channels else x
        if self.log_input:
            data = data.log1p()
        # The data point's dimensions (1 after flattening), then the batch's, if any.
        point = 3 if self.as_channels else 1
        batch = data.shape[-point - 1] if data.dim() > point else 1
        y = self.labels.vector(data.dtype)
        if y.shape[0] != batch:
            raise ConfigError(f"{len(y)} labels given for a batch of {batch}: give one "
                              "label (or condition vector) per data point.")
        if data.dim() == point:  # one data point without a batch dimension
            y = y[0]
        if self.as_channels:
            y = y[..., None, None].expand(*data.shape[:-3], self.classes, *data.shape[-2:])
            return self.net(torch.cat([data, y], -3))
        return self.net(torch.cat([data, y.expand(*data.shape[:-1], self.classes)], -1))


class ClassNormal(Prior):
    """p(z|y) = N(z; mu_y, diag sigma_y^2), one learned mean and log-scale per class (zero and
    one at the start: N(0, I) for every class until training moves them). Given condition
    vectors c, p(z|c) = N(c^T M, diag exp(2 c^T S)), M and S the classes' rows of means and
    log-scales: linear in c, the class's Gaussian at c = one-hot(y)."""

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
        if y.dtype.is_floating_point:
            y = y.to(self.loc.dtype)
            return Independent(Normal(y @ self.loc, (y @ self.log_scale).exp()), 1)
        return Independent(Normal(self.loc[y], self.log_scale[y].exp()), 1)

    def sample(self, n: int) -> Tensor:
        q = self.distribution()
        if q.batch_shape[0] != n:
            raise ConfigError(f"{q.batch_shape[0]} labels given for {n} samples: give one label "
                              "per sample.")
        return q.sample()


def check_condition(model: Any, datamodule: Any) -> None:
    """Refuse, before training, condition vectors served by the data (``data.condition``: float
    ``y`` ``[N, D]``) to a model that cannot take them: an unconditional model (it would ignore
    them), a model of the labels that enumerates classes (M2), or a model conditional on
    another length (``model.classes`` K != D)."""
    key = f"data.condition={datamodule.condition!r}"
    width = next(iter(datamodule.splits.values()))[1].shape[1]
    if model.classes is None:
        raise ConfigError(f"{key} serves a condition vector of {width} numbers per image, and "
                          "the model is not conditional: use model=cvae model.classes="
                          f"{width}, or leave data.condition out (null).")
    probe = torch.zeros(1, *model.data_shape, device=model.device)
    with torch.no_grad():
        enumerated = model.objective.latent_labels(probe) is not None
    if enumerated or model.objective.unlabelled:
        raise ConfigError(f"{key} serves condition vectors, and the objective "
                          f"{model.objective!r} sums over class labels (it models p(y)), "
                          "which a vector is not: use model=cvae with another objective, or "
                          "class labels (data.labels_key).")
    if width != model.classes:
        raise ConfigError(f"model.classes={model.classes}, and {key} holds vectors of {width} "
                          f"numbers: set model.classes={width} (the condition's length).")
