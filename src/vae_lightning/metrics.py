"""Epoch averages of the bound's terms, accumulated across batches and ranks by torchmetrics."""

from __future__ import annotations

import math
from operator import itemgetter

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.metric import CompositionalMetric

from vae_lightning.parts import Bound

TERMS = ("elbo", "recon", "kl")
BITS = "bits_per_dim"  # -ELBO / (D ln 2), D the values per image: with ``BoundMean(dims=D)``
_BOOKKEEPING = frozenset({"_computed", "_update_count"})


class BoundMean(Metric):
    """Averages over every data point seen since the last reset, on all ranks: E[log p(x|z)]
    (``recon``), KL(q(z|x) || p(z)) (``kl``) and their difference, the ELBO, in nats per data
    point. The average ELBO is the average reconstruction term minus the average KL, so one
    update per batch (two sums) serves all three terms, instead of an update of each of three
    ``MeanMetric`` objects. A non-finite term is averaged in and shows in the result. Given
    ``dims`` (the values per data point), it also gives the ELBO in bits per dimension."""

    full_state_update = False

    def __init__(self, dims: int | None = None) -> None:
        super().__init__()
        self.dims = dims
        self.add_state("total", torch.zeros(2), dist_reduce_fx="sum")  # sum of recon, of KL
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, bound: Bound) -> None:
        self.total.add_(torch.stack((bound.recon.detach(), bound.kl.detach())).sum(1))
        self.count.add_(bound.recon.numel())

    def __setattr__(self, name: str, value: object) -> None:
        # torchmetrics' bookkeeping at every update (never a parameter, submodule or buffer):
        # set directly, without nn.Module's checks.
        if name in _BOOKKEEPING:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def compute(self) -> dict[str, Tensor]:
        recon, kl = self.total / self.count
        terms = {"elbo": recon - kl, "recon": recon, "kl": kl}
        if self.dims:
            terms[BITS] = -(recon - kl) / (self.dims * math.log(2))
        return terms


class BoundTerm(CompositionalMetric):
    """One term of a ``BoundMean`` as a scalar metric, which Lightning can log (it computes a
    logged metric at the end of the epoch and resets it). Computing it computes the shared
    ``BoundMean``, whose result torchmetrics caches until the next update or reset, so the three
    terms cost one computation (and one gather across ranks); resetting it resets the
    ``BoundMean``."""

    def __init__(self, source: BoundMean, term: str) -> None:
        if term not in (*TERMS, BITS):
            raise ValueError(f"term={term!r} is not a term of the bound: expected one of "
                             f"{(*TERMS, BITS)}.")
        super().__init__(itemgetter(term), source, None)
        self.term = term

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.term!r})"
