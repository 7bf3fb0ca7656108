"""Semi-supervised learning with model M2 (Kingma, Rezende, Mohamed & Welling 2014, Sec. 3.1.2):
the generative model p(y) p(z) p(x|y, z), with p(y) uniform over the K classes, p(z) the prior
and p(x|y, z) the decoder given y; the inference model q(z|x, y) (the encoder given y) and a
classifier q(y|x) = Cat(y; pi(x)), an MLP this objective owns.

A point with its label (eq. 6) is scored by the bound on log p(x, y),
    L(x, y) = E_q(z|x,y)[log p(x|y, z)] + log p(y) - KL(q(z|x, y) || p(z)),
one without (label -1, eq. 7) by the bound on log p(x) that sums over the classes,
    U(x) = sum_y q(y|x) L(x, y) + H(q(y|x)),
each class's L from the same networks given that class (all K in one batched pass). The loss
(eq. 9) is the minibatch mean of -L and -U plus ``alpha`` times the mean of -log q(y|x) over the
labelled points, so that the classifier also learns from the labels: the paper's
alpha = 0.1 N for a bound summed over the N training points is 0.1 here, per point.

The bound logged and validated is U(x) for every point (a bound on log p(x), comparable with
any model's): recon = sum_y q(y|x) E_q[log p(x|y, z)] and KL = sum_y q(y|x) KL(q(z|x, y) ||
p(z)) + KL(q(y|x) || p(y)). ``classify(x)`` gives the classifier's logits (``vae-eval`` reports
its error on the labelled split). ``vae-eval`` bounds log p(x) with the classes enumerated:
log sum_y p(y) p^(x|y), p^ each class's importance-weighted estimate (``latent_labels``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vae_lightning.args import PositiveFloat, PositiveInt, checked
from vae_lightning.errors import ConfigError
from vae_lightning.nets import MLP, Activation
from vae_lightning.objectives.base import KL, Objective, elbo_estimate
from vae_lightning.parts import Bound, Parts


class M2(Objective, nn.Module):
    """Kingma et al.'s M2 objective over ``classes`` K, the classifier an MLP from images of
    ``data_shape`` through ``hidden`` layers of ``activation`` units; ``alpha`` weighs its
    log-likelihood of the labels; ``n_samples`` and ``kl`` as the ELBO's. ``log_input``: the
    classifier reads log(1 + x), as the encoder does with ``model.encoder.net.log_input`` (counts):
    q(y|x) is the encoder's other half, and read raw counts where q(z|x, y) read their log."""

    unlabelled = True  # trains on points whose label is hidden (-1)
    proposal = ("q(z|x, y) for each class y (the classes enumerated): elbo is M2's U(x), "
                "q(y|x)-weighted")

    @checked
    def __init__(self, classes: PositiveInt, data_shape: Sequence[PositiveInt],
                 alpha: PositiveFloat = 0.1, hidden: Sequence[PositiveInt] = (500,),
                 activation: Activation = "softplus", n_samples: PositiveInt = 1,
                 kl: KL = "auto", log_input: bool = False) -> None:
        nn.Module.__init__(self)
        self.classes, self.alpha, self.n_samples, self.kl = classes, alpha, n_samples, kl
        self.classifier = MLP(tuple(data_shape), (classes,), hidden, activation,
                              log_input=log_input)
        self._y: Tensor | None = None
        self._logged: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        return f"M2(classes={self.classes}, alpha={self.alpha})"

    def given(self, y: Tensor | None) -> None:
        """The minibatch's labels, -1 where hidden (``parts.Conditional``); condition vectors
        (floats) are refused: M2 models p(y) over the K classes, and sums over them."""
        if y is not None and y.dtype.is_floating_point:
            raise ConfigError(f"M2 models class labels 0..{self.classes - 1} and sums over them; "
                              f"got condition vectors ({y.dtype} {list(y.shape)}): give "
                              "integer labels.")
        self._y = y

    def classify(self, x: Tensor) -> Tensor:
        """The classifier's logits of q(y|x), ``[batch, K]``."""
        return self.classifier(x)

    def latent_labels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """log p(y) (uniform) and log q(y|x): ``vae-eval`` bounds log p(x) = log sum_y p(y)
        p(x|y) with the classes enumerated (``Objective.latent_labels``)."""
        log_py = torch.full((self.classes,), -math.log(self.classes), device=x.device)
        return log_py, F.log_softmax(self.classify(x).float(), -1)

    def _labelled(self, model: Parts, x: Tensor, y: Tensor) -> Bound:
        """L(x, y) of points with their labels: the conditional ELBO and log p(y)."""
        with model.given(y):
            bound = elbo_estimate(model, x, self.n_samples, self.kl)
        return Bound(bound.recon, bound.kl + math.log(self.classes))

    def _unlabelled(self, model: Parts, x: Tensor) -> tuple[Bound, Tensor]:
        """U(x), summed over the classes, and log q(y|x) ``[batch, K]``."""
        k, n = self.classes, len(x)
        every = torch.arange(k, device=x.device).repeat_interleave(n)  # class-major
        bound = self._labelled(model, x.repeat(k, *[1] * (x.dim() - 1)), every)
        recon, kl = bound.recon.view(k, n).T, bound.kl.view(k, n).T  # [batch, K]
        log_q = F.log_softmax(self.classify(x).float(), -1)
        q = log_q.exp()
        # KL(q(y|x) || p(y)) with kl's -log p(y) already in each class's KL term: - H(q(y|x)).
        # A class of q = 0 adds nothing (0 log 0 = 0): where log q underflows to -inf (logits
        # ~1e38 apart) q log q was 0 x -inf, a NaN, in the bound and in its gradient.
        log_q_or_0 = torch.where(q > 0, log_q, torch.zeros_like(log_q))
        return Bound((q * recon).sum(-1), (q * (kl + log_q_or_0)).sum(-1)), log_q

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        y = self._y if self._y is not None else torch.full((len(x),), -1, device=x.device)
        known = y >= 0
        recon, kl = torch.empty(len(x), device=x.device), torch.empty(len(x), device=x.device)
        loss = x.new_zeros(())
        if known.any():
            labelled = self._labelled(model, x[known], y[known])
            recon[known], kl[known] = labelled.recon, labelled.kl
            log_q = F.log_softmax(self.classify(x[known]).float(), -1)
            nll = -log_q.gather(1, y[known, None]).squeeze(1)
            loss = loss + self.alpha * nll.mean()
            self._logged = {"classifier_nll": nll.detach().mean(),
                            "labelled_error": (log_q.argmax(-1) != y[known]).float().mean()}
        if not known.all():
            unlabelled, _ = self._unlabelled(model, x[~known])
            recon[~known], kl[~known] = unlabelled.recon, unlabelled.kl
        bound = Bound(recon, kl)
        return loss - bound.elbo.mean(), bound

    def bound(self, model: Parts, x: Tensor) -> Bound:
        """U(x) for every point, labels or not: the bound on log p(x)."""
        return self._unlabelled(model, x)[0]

    def logged(self) -> Mapping[str, Tensor]:
        return self._logged
