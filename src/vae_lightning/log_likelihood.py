"""The ELBO and the importance-weighted estimate of log p(x) of a trained VAE over a data set,
with standard errors, in nats per data point and bits/dim: what ``vae-eval`` reports.

For each data point x, k samples z_i ~ q(z|x) give log-weights
log w_i = log p(x, z_i) - log q(z_i|x) and two estimates (``objectives.importance_weighted``):
the ELBO, (1/k) sum_i log w_i (estimator A with L = k), and the IW estimate (Burda et al.
2015), log (1/k) sum_i w_i, a lower bound on log p(x) that tightens as k grows and is the
standard test log-likelihood at k = 5000. It is >= the ELBO of the same samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

from vae_lightning.errors import ConfigError
from vae_lightning.module import VAE
from vae_lightning.objectives import auto_chunk, importance_weighted
from vae_lightning.objectives.base import over_labels
from vae_lightning.posteriors.hierarchy import layer_kls

ACTIVE = 1e-2  # a latent dimension is active when Cov_x(E_q[z_j]) exceeds this (Burda et al.)


@dataclass
class Estimate:
    """Mean over data points of a per-point estimate, with its standard error, in nats and
    bits/dim (bits/dim = -nats / (D ln 2), D values per image: lower is better)."""

    nats: float
    nats_se: float
    bits_per_dim: float
    bits_per_dim_se: float

    @classmethod
    def of(cls, values: Tensor, dims: int) -> Estimate:
        values = values.double()
        se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else math.nan
        per_bit = dims * math.log(2)
        mean = values.mean().item()
        return cls(mean, se, -mean / per_bit, se / per_bit)


def evaluate(model: VAE, batches: Iterable[Tensor | tuple[Tensor, Tensor]], k: int,
             chunk: int | None = None) -> dict[str, Any]:
    """The ELBO and IW estimates over all ``batches`` (model inputs on the model's device, or
    ``(x, y)`` pairs: a conditional model's estimates are then of log p(x|y), a model of the
    labels' (M2) of log p(x) with the classes enumerated, ``over_labels``; ``bound_of`` says):
    ``{"elbo": Estimate, "iw": Estimate, "n": number of data points, "active_units": the
    latent dimensions whose posterior mean varies over the data by more than ACTIVE}``; with
    stochastic layers, also ``"layers"``: each layer's size, active units and (where q and p
    are both chains over the layers) KL in nats, from one draw per data point."""
    model.eval()
    elbos, iws, means, kls = [], [], [], []
    y = None
    for batch in batches:
        x, y = batch if isinstance(batch, tuple | list) else (batch, None)
        with model.given(y):
            labels = model.objective.latent_labels(x)
            elbo, iw = (importance_weighted(model, x, k, chunk) if labels is None
                        else over_labels(model, x, k, chunk, *labels))
            elbos.append(elbo.cpu())
            iws.append(iw.cpu())
            with torch.no_grad():
                q = model.encoder(x)
                means.append(model.encoder.location(q).cpu().double())
                if model.encoder.posterior.layers:
                    kls.append(layer_kls(q, model.prior.distribution()))
    elbo, iw = torch.cat(elbos), torch.cat(iws)
    dims = math.prod(model.data_shape)
    activity = torch.cat(means).var(0)
    results = {"elbo": Estimate.of(elbo, dims), "iw": Estimate.of(iw, dims), "n": len(iw),
               "active_units": int((activity > ACTIVE).sum()), "latent": len(activity),
               "bound_of": bound_of(model, y)}
    sizes = model.encoder.posterior.layers
    if sizes:
        kl = torch.cat(kls, dim=1).double().mean(1).tolist() if kls[0] is not None else None
        results["layers"] = [
            {"size": size, "active_units": int((part > ACTIVE).sum()),
             "kl": kl[i] if kl is not None else None}
            for i, (size, part) in enumerate(zip(sizes, activity.split(sizes)))]
    return results


def refuse_unfinishable(model: VAE, batch: tuple[Tensor, Tensor], points: int, k: int,
                        chunk: int | None, max_hours: float | None) -> None:
    """Time one decoder pass on the first batch ``(x, y)`` (in a forked random stream: the
    estimate's draws stay those of the seed) and refuse an evaluation of ``points`` points with
    ``k`` samples that would take more than ``max_hours`` (``eval.max_hours``)."""
    if max_hours is None:
        return
    x, y = batch
    chunk = min(k, chunk or auto_chunk(x, k))
    with (torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []),
          model.given(y)):
        labels = model.objective.latent_labels(x)  # a model of the labels: K passes, y = each
        enumerated = 1 if labels is None else len(labels[0])
        importance_weighted(model, x, chunk, chunk)  # warm-up
        start = time.perf_counter()
        importance_weighted(model, x, chunk, chunk)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - start
    passes = math.ceil(k / chunk) * math.ceil(points / len(x)) * enumerated
    hours = seconds * passes / 3600
    per_class = f", {enumerated} passes a batch: y enumerated" if labels is not None else ""
    if hours > max_hours:
        raise ConfigError(
            f"eval.k={k} on {points} points would take about {hours:.3g} hours on "
            f"{x.device} (one pass of {chunk} samples x {len(x)} points took "
            f"{seconds:.3g} s{per_class}), above eval.max_hours={max_hours:g}; nothing was run. "
            "Lower eval.k or set eval.limit, or raise eval.max_hours (null: no limit).")


def bound_of(model: VAE, y: Tensor | None = None) -> str:
    """What ``evaluate``'s estimates bound, in words: log p(x); for a model of the labels (M2),
    log p(x) with y enumerated (``Objective.latent_labels``); for a model given its condition
    (a conditional VAE, which models no p(y)), log p(x|y), given each image's own label, or its
    condition vector when the data serve floats ``y`` (``data.condition``)."""
    if model.classes is None:
        return "log p(x)"
    probe = torch.zeros(1, *model.data_shape, device=model.device)
    labels = model.objective.latent_labels(probe)
    if labels is not None:
        return (f"log p(x), y enumerated over its {len(labels[0])} classes: "
                "log sum_y p(y) p^(x|y), p^(x|y) from k samples of q(z|x, y) per class; "
                "the ELBO is M2's U(x)")
    given = ("its condition vector y" if y is not None and y.is_floating_point()
             else "its own class label y")
    return (f"log p(x|y), a conditional likelihood of each image given {given} (no p(y) is "
            "modelled): not log p(x)")


def code_length(likelihood: Any, datamodule: Any) -> bool:
    """Whether -log2 p(x) / D is a code length in bits per dimension: the likelihood is a
    probability of discrete pixel values, and the data are those values (binary pixels for a
    Bernoulli likelihood: binarized data)."""
    if likelihood.support is constraints.boolean:
        return getattr(datamodule, "binarize", "none") != "none"
    return likelihood.discrete


def units(discrete: bool) -> str:
    """What eval.json's numbers are, in words."""
    if discrete:
        return ("nats per data point; bits/dim = -nats / (input_dim ln 2): the likelihood is a "
                "probability of the discrete (binary or 8-bit) pixel values, so -log2 p(x) / "
                "input_dim is a code length.")
    return ("nats per data point: the likelihood is a density of pixel values in [0, 1], so "
            "these are log densities (they can be positive); they shift by input_dim x log of "
            "the pixel scale when the data are rescaled, so no bits/dim is given (it is not a "
            "code length without a dequantization).")
