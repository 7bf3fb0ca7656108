"""The ELBO and the importance-weighted estimate of log p(x) of a trained VAE over a data set,
with standard errors, in nats per data point and bits/dim: what ``vae-eval`` reports.

For each data point x, k samples z_i ~ q(z|x) give log-weights
log w_i = log p(x, z_i) - log q(z_i|x) and two estimates (``objectives.importance_weighted``):
the ELBO, (1/k) sum_i log w_i (estimator A with L = k), and the IW estimate (Burda et al.
2015), log (1/k) sum_i w_i, a lower bound on log p(x) that tightens as k grows and is the
standard test log-likelihood at k = 5000. It is >= the ELBO of the same samples.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution

from vae_lightning.divergence import refuse_nonfinite
from vae_lightning.errors import ConfigError
from vae_lightning.files import atomic_write
from vae_lightning.module import VAE
from vae_lightning.objectives import auto_chunk, importance_weighted
from vae_lightning.objectives.base import closed_form_kl, over_labels
from vae_lightning.parts import scored_draws
from vae_lightning.posteriors.hierarchy import layer_kls

log = logging.getLogger(__name__)

ACTIVE = 1e-2  # a latent dimension is active when Cov_x(E_q[z_j]) exceeds this (Burda et al.)
KL_DRAWS = 16  # draws of z per point for a Monte-Carlo KL(q(z|x) || p(z)) without a closed form


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


# What each batch adds: per point, on the CPU but for the two kept on the model's device.
_PARTS = ("elbos", "iws", "means", "kls", "params", "divergences")
_ON_DEVICE = ("kls", "params")
# How far below the ELBO an IW estimate of the same draws may lie, relative to 1 + |ELBO|: only
# float32 rounding (of the running sum and logsumexp) puts it there.
ROUNDING = 1e-4


class Progress:
    """Where a long evaluation stands, saved to ``path`` after each batch, so that a ``vae-eval``
    stopped part-way (killed, a machine's time spent) goes on from there when run again with
    the same checkpoint and settings (``key``), to the same numbers: what the finished batches
    gave, the random state after the last of them and the seconds spent on them (so that the
    evaluation's time is reported whole). The file is read as plain tensors
    (``weights_only``) and trusted for nothing more: one that does not parse, belongs to another
    evaluation or does not add up is set aside with a warning and the evaluation starts over.
    ``PARTS``: the lists of per-batch results it keeps (``ON_DEVICE``: those kept on the
    model's device); ``inconsistency``: what does not add up in them."""

    PARTS: tuple[str, ...] = _PARTS
    ON_DEVICE: tuple[str, ...] = _ON_DEVICE

    def __init__(self, path: str | Path, key: dict[str, Any]) -> None:
        # As plain values (strings for the rest), which a weights_only load reads back.
        self.path, self.key = Path(path), json.loads(json.dumps(key, default=str))

    def load(self, device: torch.device) -> tuple[int, dict[str, list], float] | None:
        """The number of batches done, their results (on ``device``) and the seconds they took
        (0 when a file of an earlier version does not say), with the random state restored;
        None when there is nothing to go on from. What the file holds is checked as far as it
        can be without the batches (``inconsistency``); ``evaluate`` checks the rest against
        the batches as it replays them. A file of another evaluation is set aside (kept beside,
        ``set_aside``), and one set aside earlier that is of this evaluation is gone on from:
        a quick eval.k=100 check between two runs of a stopped k = 5000 evaluation replaced
        the hours of batches it kept."""
        if self.path.is_file():
            state, why = self._read(self.path)
            if state is not None:
                return self._restore(state, device)
            self.set_aside(why)
        for kept in self._kept():
            state, _ = self._read(kept)
            if state is not None:
                try:
                    kept.replace(self.path)
                except OSError:
                    continue
                log.info("Going on with the batches of this evaluation set aside in %s.", kept)
                return self._restore(state, device)
        return None

    def batches_done(self) -> int:
        """How many batches ``load`` would go on from (0: none), with nothing restored, moved
        or set aside: what is left to run is what a time check counts."""
        for path in (self.path, *self._kept()):
            if path.is_file():
                state, _ = self._read(path)
                if state is not None:
                    return state["done"]
        return 0

    def _read(self, path: Path) -> tuple[dict[str, Any] | None, str]:
        """The state in ``path`` if it is this evaluation's and adds up, else None and why."""
        why = "another checkpoint or settings, or unreadable"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            done, parts, rng = state["done"], state["parts"], state["rng"]
            seconds = state.get("seconds", 0.0)
            fits = (_same_key(state["key"], self.key) and isinstance(done, int) and done > 0
                    and isinstance(seconds, float) and seconds >= 0
                    and set(parts) == set(self.PARTS)
                    and all(isinstance(parts[name], list) for name in self.PARTS)
                    and isinstance(rng["cpu"], Tensor))
            if fits and (wrong := self.inconsistency(done, parts)):
                fits, why = False, wrong
        except Exception:  # noqa: BLE001 - any unreadable file: start over, say so
            fits = False
        return (state if fits else None), why

    @staticmethod
    def inconsistency(done: int, parts: dict[str, list]) -> str | None:
        """What does not add up in the ``done`` batches' ``parts``, in words (None: nothing
        found)."""
        return _inconsistency(done, parts)

    def _restore(self, state: dict[str, Any], device: torch.device
                 ) -> tuple[int, dict[str, list], float]:
        done, parts, rng = state["done"], state["parts"], state["rng"]
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        for name in self.ON_DEVICE:
            parts[name] = [t.to(device) if isinstance(t, Tensor) else t for t in parts[name]]
        return done, parts, state.get("seconds", 0.0)

    def _kept(self) -> list[Path]:
        """The files set aside beside ``path``: ``<name>-<n>.pt``, in their numbers' order."""
        stem, suffix = self.path.name.removesuffix(self.path.suffix), self.path.suffix
        found = self.path.parent.glob(f"{stem}-*{suffix}") if self.path.parent.is_dir() else []
        numbered = [(p.name[len(stem) + 1:-len(suffix)], p) for p in found]
        return [p for n, p in sorted((int(n), p) for n, p in numbered if n.isdigit())]

    def set_aside(self, why: str) -> None:
        """Say that the file is not gone on from, and why, and keep it beside under the first
        free ``<name>-<n>.pt`` (n = 2, 3, ...): it may be another evaluation's hours of batches,
        which that evaluation, run again, goes on from (``load``). The evaluation starts over."""
        stem, suffix = self.path.name.removesuffix(self.path.suffix), self.path.suffix
        number = 2
        while (kept := self.path.with_name(f"{stem}-{number}{suffix}")).exists():
            number += 1
        try:
            self.path.replace(kept)
        except OSError as err:
            log.warning("%s holds no part of this evaluation (%s) and could not be kept aside "
                        "(%s): starting over, and replacing it.", self.path, why, err)
            return
        log.warning("%s holds no part of this evaluation (%s): kept as %s (run that evaluation "
                    "again to go on from it); starting over.", self.path, why, kept.name)

    def save(self, done: int, parts: dict[str, list], device: torch.device,
             seconds: float = 0.0) -> None:
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as file:
            torch.save({"key": self.key, "done": done, "parts": parts, "rng": rng,
                        "seconds": float(seconds)}, file)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _same_key(saved: Any, key: dict[str, Any]) -> bool:
    """Whether a progress file's key is this evaluation's: the same settings, and data read from
    the same place however that place was named (``checkpoint_data.read_from``)."""
    from vae_lightning.checkpoint_data import read_from

    return isinstance(saved, dict) and (
        {**saved, "data_source": read_from(saved.get("data_source"))}
        == {**key, "data_source": read_from(key.get("data_source"))})


def entries_wrong(done: int, parts: dict[str, list], every: tuple[str, ...],
                  optional: tuple[str, ...] = ()) -> str | None:
    """Unless each of a progress file's lists ``every`` holds one entry per batch ``done``, and
    each of ``optional`` one or none at all, what is wrong, in words (None: nothing)."""
    if (any(len(parts[name]) != done for name in every)
            or any(len(parts[name]) not in (0, done) for name in optional)):
        return "its lists of results do not hold one entry per batch done"
    return None


def _inconsistency(done: int, parts: dict[str, list]) -> str | None:
    """What does not add up in the ``done`` batches' ``parts`` of a progress file, in words
    (None: nothing found), before it is trusted: per batch, the ELBO and the IW estimate one
    finite number per point, the IW estimate at least the ELBO (both are of the same k
    log-weights: log mean exp >= mean, Jensen; a little float32 rounding allowed), and the
    posterior means and parameters one row per point, the same width in every batch; all of
    them, and the KL divergences, finite."""
    if wrong := entries_wrong(done, parts, ("iws", "elbos", "means"),
                              optional=("params", "divergences", "kls")):
        return wrong
    width = {}
    for i in range(done):
        elbo, iw, means = (parts[name][i] for name in ("elbos", "iws", "means"))
        # Kept only where eval.json's mi needs them (_keeps_params): else as the means, unused.
        params = parts["params"][i] if parts["params"] else means
        if not all(isinstance(t, Tensor) and t.is_floating_point()
                   for t in (elbo, iw, means, params)):
            return f"batch {i}'s results are not all tensors of real numbers"
        n = len(elbo) if elbo.dim() == 1 else -1
        if n < 1 or iw.shape != (n,) or means.dim() != 2 or len(means) != n \
                or params.dim() < 2 or len(params) != n:
            return (f"batch {i}'s results are not one per point (ELBO {list(elbo.shape)}, IW "
                    f"{list(iw.shape)}, means {list(means.shape)}, parameters "
                    f"{list(params.shape)})")
        shapes = (means.shape[1:], params.shape[1:])
        if width.setdefault("rows", shapes) != shapes:
            return f"batch {i}'s posterior means or parameters are not the width of batch 0's"
        if parts["divergences"] and not (isinstance(parts["divergences"][i], Tensor)
                                         and parts["divergences"][i].shape == (n,)):
            return f"batch {i}'s KL divergences are not one per point"
        kls = parts["kls"][i] if parts["kls"] else None
        if kls is not None and not (isinstance(kls, Tensor) and kls.dim() == 2
                                    and kls.shape[1] == n):
            return f"batch {i}'s layer KLs are not one column per point"
        if parts["kls"] and (kls is None) != (parts["kls"][0] is None):
            return f"batch {i}'s layer KLs are not of the kind of batch 0's"
        # The KLs and parameters too: eval.json's kl and mi are their means (NaN: null).
        kept = [t for t in (parts["divergences"][i] if parts["divergences"] else None, kls)
                if t is not None]
        if not all(t.is_floating_point() for t in kept):
            return f"batch {i}'s KL divergences are not real numbers"
        if not all(bool(torch.isfinite(t).all()) for t in (elbo, iw, means, params, *kept)):
            return (f"batch {i}'s ELBO, IW estimate, posterior means or parameters, or KL "
                    "divergences are not all finite")
        if bool((iw < elbo - ROUNDING * (1 + elbo.abs())).any()):
            return f"batch {i}'s IW estimate is below its ELBO, which it never is"
    return None


def _misfit(model: VAE, parts: dict[str, list], i: int, x: Tensor, y: Tensor | None
            ) -> str | None:
    """How batch ``i`` of a progress file's ``parts`` does not fit the batch ``x`` (labels
    ``y``) that the evaluation draws in its place, in words; None when it fits: as many points,
    and (checked on the first) posterior means and parameters of the model's widths."""
    if len(parts["elbos"][i]) != len(x):
        return f"its batch {i} holds {len(parts['elbos'][i])} points, and the data's {len(x)}"
    if i > 0:
        return None
    # The first point, with its own label: a conditional model (or M2) refuses a batch of one
    # given the batch's labels.
    with torch.no_grad():
        with model.given(None if y is None else y[:1]):
            labels = model.objective.latent_labels(x[:1])
        with model.given(_posterior_labels(None if y is None else y[:1], labels)):
            own = model.encoder.params(x[:1])
            mean = posterior_mean(model.encoder, model.encoder.posterior(own))
        enumerated = labels is not None
    if parts["means"][0].shape[1:] != mean.shape[1:] or (
            parts["params"] and parts["params"][0].shape[1:] != own.shape[1:]):
        kept = list(parts["params"][0].shape[1:]) if parts["params"] else "not kept"
        return (f"its posterior parameters ({kept}) and means "
                f"{list(parts['means'][0].shape[1:])} per point are not the model's "
                f"{list(own.shape[1:])} and {list(mean.shape[1:])}")
    if _keeps_params(model, own) and not parts["params"]:
        return "it keeps no posterior parameters, which this model's evaluation needs"
    layers = model.encoder.posterior.layers
    kls = parts["kls"][0] if parts["kls"] else None
    # What evaluate keeps of each batch: layer KLs for stochastic layers, KL(q || p) unless the
    # labels are enumerated (M2); a file without them would fail only at the end.
    if bool(parts["kls"]) != bool(layers) or (kls is not None and len(kls) != len(layers)) \
            or bool(parts["divergences"]) == enumerated:
        return "its KL divergences are not those of this model's evaluation"
    return None


def _posterior_labels(y: Tensor | None, labels: tuple[Tensor, Tensor] | None
                      ) -> Tensor | None:
    """The labels a batch's q(z|x, y) is given for its posterior means (the active units): the
    data's ``y``; for a model of the labels (M2: ``labels``, its log p(y) and log q(y|x)), whose
    bounds enumerate y, q(y|x)'s most probable class where a label is hidden (-1, as data=array
    serves an unlabelled point) or none is given (batches of inputs alone): q(z|x, y) refused
    them, and the evaluation with it."""
    if labels is None or (y is not None and y.is_floating_point()):
        return y
    guess = labels[1].argmax(-1)
    return guess if y is None else torch.where(y >= 0, y, guess.to(y.dtype))


def evaluate(model: VAE, batches: Iterable[Tensor | tuple[Tensor, Tensor]], k: int,
             chunk: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The ELBO and IW estimates over all ``batches`` (model inputs on the model's device, or
    ``(x, y)`` pairs: a conditional model's estimates are then of log p(x|y), a model of the
    labels' (M2) of log p(x) with the classes enumerated, ``over_labels``; ``bound_of`` says):
    ``{"elbo": Estimate, "iw": Estimate, "n": number of data points, "active_units": the
    latent dimensions whose posterior mean varies over the data by more than ACTIVE}``; with
    stochastic layers, also ``"layers"``: each layer's size, active units and (where q and p
    are both chains over the layers) KL in nats, from one draw per data point. ``progress``:
    where the batches done are kept, and taken up from (``Progress``); the batches are still
    all drawn from ``batches``, so that data drawn afresh (dynamic binarization) stay in step.
    ``"seconds"``: the evaluation's time, over all the runs that took part in it
    (``"seconds_of_earlier_runs"`` of it before this one)."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list] = {name: [] for name in _PARTS}
    done, seconds = 0, 0.0
    fresh = _rng_state(device)  # a fresh evaluation's, should the replay below disagree
    if progress is not None and (restored := progress.load(device)) is not None:
        done, parts, seconds = restored
    batches = iter(batches)
    y = None
    if done:
        # The batches done are drawn again (data drawn afresh stay in step), each checked
        # against what the file keeps of it. The first (batch size, widths) is held until it is
        # checked: a file that disagrees there is set aside and the evaluation starts over with
        # it. One that disagrees later (fewer or other batches) is refused: its batches are not
        # held, which would take the memory of the split.
        first = next(batches, None)
        x, y = (first if isinstance(first, tuple | list) else (first, None))
        why = "the data give no batch" if first is None else _misfit(model, parts, 0, x, y)
        if why is not None:
            progress.set_aside(why)
            _set_rng_state(fresh, device)
            parts = {name: [] for name in _PARTS}
            done, seconds = 0, 0.0
            batches = itertools.chain([first] if first is not None else [], batches)
        else:
            count = 1
            for batch in itertools.islice(batches, done - 1):
                x, y = batch if isinstance(batch, tuple | list) else (batch, None)
                if why := _misfit(model, parts, count, x, y):
                    break
                count += 1
            if why is None and count < done:
                why = f"it keeps {done} batches, and the data give {count}"
            if why is not None:
                raise ConfigError(f"{progress.path} does not fit this evaluation ({why}): "
                                  "delete it to evaluate from the start.")
            log.info("Going on with the evaluation after its first %d batches (%s).", done,
                     progress.path)
    start = time.perf_counter()
    elbos, iws, means, kls, params, divergences = (parts[name] for name in _PARTS)
    keep: bool | None = None  # whether each batch's posterior parameters are kept
    for i, batch in enumerate(batches, start=done):
        x, y = batch if isinstance(batch, tuple | list) else (batch, None)
        with torch.no_grad(), model.given(y):  # q(y|x) only scored: no graph kept with it
            labels = model.objective.latent_labels(x)
        with model.given(_posterior_labels(y, labels)):
            elbo, iw = (importance_weighted(model, x, k, chunk) if labels is None
                        else over_labels(model, x, k, chunk, *labels))
            # Before the batch is kept: a resumed evaluation would only repeat it.
            refuse_nonfinite(torch.stack([elbo, iw]), f"the bounds (ELBO, IW k={k}) on "
                             f"batch {i} ({len(x)} points)", model)
            elbos.append(elbo.cpu())
            iws.append(iw.cpu())
            with torch.no_grad():
                own = model.encoder.params(x)
                if keep is None:
                    keep = _keeps_params(model, own)
                    if not keep:
                        params.clear()  # kept by an earlier version's file: not needed
                if keep:
                    params.append(own)
                q = model.encoder.posterior(own)
                means.append(posterior_mean(model.encoder, q).cpu().double())
                if model.encoder.posterior.layers:
                    kls.append(layer_kls(q, model.prior.distribution()))
                if labels is None:
                    divergences.append(posterior_kl(q, model.prior.distribution(), x.device).cpu())
        if progress is not None:
            progress.save(i + 1, parts, device, seconds + time.perf_counter() - start)
    elbo, iw = torch.cat(elbos), torch.cat(iws)
    dims = math.prod(model.data_shape)
    means = torch.cat(means)
    active = active_units(means)  # None for one point: eval.json's null
    results = {"elbo": Estimate.of(elbo, dims), "iw": Estimate.of(iw, dims), "n": len(iw),
               # for a paired comparison (vae-eval's AIS; eval.json's per_point: vae-compare)
               "iw_per_point": iw, "elbo_per_point": elbo,
               "active_units": None if active is None else int(active.sum()),
               "latent": means.shape[1], "bound_of": bound_of(model, y)}
    if divergences:  # not for a model of the labels (M2), whose q(z|x, y) has y enumerated
        kl = torch.cat(divergences).double()
        results["kl"] = kl.mean().item()
        family = model.encoder.posterior.informative()
        terms = (mutual_information_terms(family, torch.cat(params))
                 if params and _keeps_params(model, params[0]) else None)
        results["mi"] = None if terms is None else terms.mean().item()
        # Its standard error over the points (null for one point), as the bounds'.
        results["mi_se"] = (None if terms is None or len(terms) < 2
                            else (terms.std() / math.sqrt(len(terms))).item())
    sizes = model.encoder.posterior.layers
    if sizes:
        kl = torch.cat(kls, dim=1).double().mean(1).tolist() if kls[0] is not None else None
        parts = active.split(sizes) if active is not None else [None] * len(sizes)
        results["layers"] = [
            {"size": size, "active_units": None if part is None else int(part.sum()),
             "kl": kl[i] if kl is not None else None}
            for i, (size, part) in enumerate(zip(sizes, parts))]
    results["seconds"] = round(seconds + time.perf_counter() - start, 1)
    results["seconds_of_earlier_runs"] = round(seconds, 1)
    return results


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def active_units(means: Tensor) -> Tensor | None:
    """Which latent units are active over the points whose E_q[z] are ``means`` ``[N, latent]``
    (``posterior_mean``): Burda et al.'s criterion, the unbiased variance over the points above
    ``ACTIVE``, as vae-eval (``evaluate``) and vae-encode count them. Of E_q[z], not of the
    location: a von Mises-Fisher's mean A_m(kappa) mu, whose direction mu
    varies whatever q's spread, a near-uniform q carrying no information. None for fewer than
    two points: a variance over one point is not defined (NaN, which read as no unit active)."""
    if len(means) < 2:
        return None
    return means.double().var(0) > ACTIVE


def posterior_mean(encoder: Any, q: Distribution) -> Tensor:
    """E_q[z], the statistic of Burda et al.'s active units, where q has it in closed form;
    else the encoder's location (a flow's, a chain of layers', a Cauchy's, whose mean is
    intractable or does not exist). A von Mises-Fisher's mean A_m(kappa) mu, not its direction
    mu: a near-uniform q on the sphere carries no information, whatever its direction."""
    try:
        mean = q.mean
    except NotImplementedError:
        return encoder.location(q)
    return mean if bool(torch.isfinite(mean).all()) else encoder.location(q)


def posterior_kl(q: Distribution, p: Distribution, device: torch.device) -> Tensor:
    """KL(q(z|x) || p(z)) per data point: analytic where torch.distributions' registry has the
    pair, else the mean of log q(z) - log p(z) over KL_DRAWS draws z ~ q (in a forked random
    stream, so that the evaluation's other draws are those of its seed)."""
    kl = closed_form_kl(q, p)
    if kl is not None:
        return kl
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        z, log_q = scored_draws(q, KL_DRAWS)
        return (log_q - p.log_prob(z)).mean(0)


def _keeps_params(model: VAE, params: Tensor) -> bool:
    """Whether the evaluation keeps each point's posterior parameters ``params``: only for
    eval.json's ``mi`` (``mutual_information``), which needs every q(z|x) in closed form, for a
    model without labels. A flow's amortised parameters (thousands a point) would fill the
    split's memory and the progress file for nothing."""
    return model.classes is None and pairwise_density(model.encoder.posterior.informative(),
                                                      params)


def pairwise_density(family: Any, params: Tensor) -> bool:
    """Whether ``mutual_information`` can score every point's draw under every point's q(z|x) at
    once: q has a density at any z (``density``), in closed form per point, broadcast over a
    batch of posteriors (a diagonal Gaussian, Laplace or Student-t, the vMF, relaxed categorical
    blocks); not a flow (an inverse pass per pair of points) nor a chain of stochastic layers
    (but for its informative first layer, ``Family.informative``)."""
    if "density" not in family.features:
        return False
    with torch.no_grad():
        q = family(params[:1])
    return not isinstance(q, TransformedDistribution) and not hasattr(q, "rsample_and_log_prob")


def mutual_information(family: Any, params: Tensor, batch: int = 500) -> float:
    """I_q(x; z), the mean of ``mutual_information_terms``."""
    return mutual_information_terms(family, params, batch).mean().item()


def mutual_information_terms(family: Any, params: Tensor, batch: int = 500) -> Tensor:
    """I_q(x; z), the mutual information between the data points and their codes under the
    aggregate posterior q(z) = (1/N) sum_n q(z|x_n) of the N points whose posterior parameters
    are ``params`` (Hoffman & Johnson 2016; He et al. 2019 report it beside the KL and active
    units as the measure of posterior collapse): E_i[log q(z_i|x_i) - log q(z_i)], z_i ~
    q(z|x_i) one draw each, log q(z_i) = logsumexp_n log q(z_i|x_n) - log N over all N points.
    It is E_x KL(q(z|x) || p(z)) - KL(q(z) || p(z)): at most the mean KL, and at most log N.
    Needs q(z|x_n)'s density at every z_i, batch by batch (``pairwise_density``); draws in a
    forked random stream. The terms, one a point (float64; their mean is the estimate, their
    spread its standard error, eval.json's ``mi_se``)."""
    n = len(params)
    posteriors = [family(params[start:start + batch]) for start in range(0, n, batch)]
    terms = []
    with torch.random.fork_rng(devices=[params.device] if params.device.type == "cuda" else []):
        for own in posteriors:
            z, log_own = scored_draws(own, 1)
            z, log_own = z[0], log_own[0]
            log_aggregate = torch.full_like(log_own, -math.inf)
            for other in posteriors:
                log_q = pairwise_log_prob(other, z)
                log_aggregate = torch.logaddexp(log_aggregate, torch.logsumexp(log_q, dim=1))
            terms.append((log_own - (log_aggregate - math.log(n))).double())
    return torch.cat(terms)


def pairwise_log_prob(q: Distribution, z: Tensor) -> Tensor:
    """log q_n(z_i) ``[I, N]`` for each draw z_i of ``z`` ``[I, d]`` under each posterior q_n of
    the batch ``q`` ``[N]`` (``mutual_information_terms``' N x N pairs). A diagonal Gaussian's
    (the default posterior's) in closed form by three products, in float64:
    -1/2 [sum_d z_id^2 / s_nd^2 - 2 z_id m_nd / s_nd^2 + m_nd^2 / s_nd^2 + 2 log s_nd + log 2 pi],
    which a pass over every pair of 10,000 points took minutes to broadcast (an [I, N, d] tensor
    a block); any other family broadcast through its own log_prob."""
    base = q.base_dist if isinstance(q, Independent) else None
    if (type(base) is Normal and q.reinterpreted_batch_ndims == 1 and z.dim() == 2
            and base.loc.dim() == 2):
        loc, scale, z = base.loc.double(), base.scale.double(), z.double()
        # Centred on the posteriors' mean first ((z - m)^2 is the same): the expansion's terms
        # grow as (m / s)^2 and cancelled to nats of error (m = 30, s = 1e-6: 2.2 nats).
        centre = loc.mean(0)
        loc, z = loc - centre, z - centre
        precision = scale.pow(-2)
        shift = loc * precision
        constant = ((loc * shift).sum(-1) + 2 * scale.log().sum(-1)
                    + loc.shape[-1] * math.log(2 * math.pi))
        return -0.5 * (z.pow(2) @ precision.T - 2 * z @ shift.T + constant)
    return q.log_prob(z[:, None, :])


def refuse_unfinishable(model: VAE, batch: tuple[Tensor, Tensor], points: int, k: int,
                        chunk: int | None, max_hours: float | None, done: int = 0) -> float:
    """Time one decoder pass on the first batch ``(x, y)`` (in a forked random stream: the
    estimate's draws stay those of the seed) and refuse an evaluation of ``points`` points with
    ``k`` samples that would take more than ``max_hours`` (``eval.max_hours``); the hours it
    would take (0 where ``max_hours`` is None: nothing is timed). ``done``: how many of the
    points a stopped run of this evaluation scored already (``Progress``): not counted."""
    if max_hours is None:
        return 0.0
    x, y = batch
    chunk = min(k, chunk or auto_chunk(x, k))
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        with model.given(y), torch.no_grad():
            labels = model.objective.latent_labels(x)  # a model of the labels: K passes, y = each
        enumerated = 1 if labels is None else len(labels[0])
        # Each of M2's passes is given one class for every point (``over_labels``), not the
        # data's labels, which may be hidden (-1: the pass was refused for them).
        timed = y if labels is None else torch.zeros(len(x), dtype=torch.long, device=x.device)
        with model.given(timed):
            importance_weighted(model, x, chunk, chunk)  # warm-up
            start = time.perf_counter()
            importance_weighted(model, x, chunk, chunk)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            seconds = time.perf_counter() - start
    left = points - min(done, points)
    passes = math.ceil(k / chunk) * math.ceil(left / len(x)) * enumerated
    hours = seconds * passes / 3600
    per_class = f", {enumerated} passes a batch: y enumerated" if labels is not None else ""
    scored = f" (the other {points - left} scored by a stopped run)" if left < points else ""
    if hours > max_hours:
        raise ConfigError(
            f"eval.k={k} on {left} points{scored} would take about {hours:.3g} hours on "
            f"{x.device} (one pass of {chunk} samples x {len(x)} points took "
            f"{seconds:.3g} s{per_class}), above eval.max_hours={max_hours:g}; nothing was run. "
            "Lower eval.k or set eval.limit, or raise eval.max_hours (null: no limit).")
    return hours


def bound_of(model: VAE, y: Tensor | None = None) -> str:
    """What ``evaluate``'s estimates bound, in words: log p(x); for a model of the labels (M2),
    log p(x) with y enumerated (``Objective.latent_labels``); for a model given its condition
    (a conditional VAE, which models no p(y)), log p(x|y), given each image's own label, or its
    condition vector when the data serve floats ``y`` (``data.condition``). A model with
    ``classes`` set but no part that reads y (a checkpoint from before that was refused) is
    unconditional: log p(x). A prior's ``bound_note`` is added (the VQ-VAE's uniform code
    prior: what its bound is and is not)."""
    if model.classes is None or not getattr(model, "_conditional", ()):
        note = getattr(model.prior, "bound_note", "")
        return f"log p(x) {note}" if note else "log p(x)"
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


def units(discrete: bool, pixels: bool = True) -> str:
    """What eval.json's numbers are, in words (``pixels``: the data are pixel values in [0, 1],
    else feature vectors: counts where ``discrete``, else real-valued)."""
    if discrete:
        values = ("discrete (binary or 8-bit) pixel values" if pixels else
                  "counts (non-negative integers)")
        return ("nats per data point; bits/dim = -nats / (input_dim ln 2): the likelihood is a "
                f"probability of the {values}, so -log2 p(x) / input_dim is a code length.")
    data, scale = (("pixel values in [0, 1]", "the pixel scale") if pixels
                   else ("the real-valued feature vectors", "their scale"))
    return (f"nats per data point: the likelihood is a density of {data}, so these are log "
            "densities (they can be positive); they shift by input_dim x log of "
            f"{scale} when the data are rescaled, so no bits/dim is given (it is not a "
            "code length without a dequantization).")
