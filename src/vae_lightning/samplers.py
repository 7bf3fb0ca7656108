"""Samplers of z fitted after training, as pythae's GMM and MAF samplers: a density fitted to the
locations of q(z|x) (the posterior means, ``Encoder.location``) of the training images, from
which ``vae-sample sampler=gmm`` or ``sampler=flow`` draws z for the decoder in place of the
prior's. Where the aggregate posterior q(z) = E_x q(z|x) and p(z) differ (regions of the prior
that no image encodes to), such samples fall where the decoder was trained.

- ``GaussianMixture``: scikit-learn's ``GaussianMixture`` (EM), full or diagonal covariances;
- ``FlowSampler``: a masked autoregressive flow (``priors.flow.FlowPrior``'s) fitted by maximum
  likelihood with Adam, on the locations standardised per dimension.

A fitted sampler is saved beside its checkpoint (``fitted_path``: ``<checkpoint>.<name>.pt``)
and used again while the checkpoint's content (its SHA-256) and the sampler's options are those
it was fitted with; otherwise it is fitted anew. The file holds tensors and plain values only
(``torch.save``, read with ``weights_only=True``): the sampler's name, options, the checkpoint's
digest, the latent size, the number of points and the fitted tensors, each checked when read.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from vae_lightning.args import NonNegativeInt, PositiveFloat, PositiveInt, checked, fail
from vae_lightning.errors import CheckpointError
from vae_lightning.files import open_regular

log = logging.getLogger(__name__)

FORMAT = "vae-lightning fitted sampler"
VERSION = 1


class Sampler:
    """A density over z fitted to points ``z`` ``[N, latent]`` (``fit``; an option that cannot
    fit them is an ``ArgumentError`` naming it), sampled by ``sample(n)``; ``state()`` its fitted
    tensors and ``load(state, latent)`` their reverse (``ValueError`` naming what does not
    fit); ``options()`` its constructor's arguments. ``stays_in``: the latent spaces confined
    to part of R^latent (``parts.CONFINED``) that its draws stay in (a density on R^latent:
    none)."""

    stays_in: frozenset[str] = frozenset()

    def describe(self) -> str:
        """What the density is, in words."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in vars(self).items() if not key.startswith("_")}

    def check(self, model: Any) -> str | None:
        """Why this sampler cannot serve ``model`` (None: it can), said before any data are
        read to fit it."""
        return None

    def fit(self, z: Tensor) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def load(self, state: Mapping[str, Tensor], latent: int) -> None:
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({shown})"


class GaussianMixture(Sampler):
    """A mixture of ``n_components`` Gaussians with ``covariance`` ``full`` or ``diag`` matrices,
    fitted by scikit-learn's EM (at most ``max_iter`` iterations, k-means start from ``seed``)."""

    @checked
    def __init__(self, n_components: PositiveInt = 10,
                 covariance: Literal["full", "diag"] = "full", max_iter: PositiveInt = 100,
                 seed: NonNegativeInt = 0) -> None:
        self.n_components, self.covariance = n_components, covariance
        self.max_iter, self.seed = max_iter, seed
        self._state: dict[str, Tensor] = {}

    def describe(self) -> str:
        return f"a {self.n_components}-component Gaussian mixture ({self.covariance} covariances)"

    def fit(self, z: Tensor) -> None:
        from sklearn.mixture import GaussianMixture as EM

        if self.n_components > len(z):
            fail(self, "n_components", self.n_components,
                 f"at most the {len(z)} points it is fitted to")
        # No bar: scikit-learn's EM reports nothing while it runs, which can be minutes.
        log.info("Fitting %s by EM to %d points of %d dimensions (at most max_iter=%d "
                 "iterations; minutes for many points on a CPU).", self.describe(), len(z),
                 z.shape[-1], self.max_iter)
        began = time.perf_counter()
        try:
            em = EM(self.n_components, covariance_type=self.covariance, max_iter=self.max_iter,
                    random_state=self.seed).fit(z.double().numpy())
        except ValueError as err:  # scikit-learn's words, as a traceback, were all one got
            if "ill-defined empirical covariance" not in str(err):
                raise
            fail(self, "n_components", self.n_components,
                 f"EM left a component on points of the {len(z)} that do not vary (repeated "
                 "locations, or a unit constant among them), whose "
                 f"{self.covariance} covariance is singular; expected fewer components")
        log.info("Gaussian mixture fitted in %d EM iterations, %.0f s.", em.n_iter_,
                 time.perf_counter() - began)
        if not em.converged_:
            log.warning("The Gaussian mixture did not converge in max_iter=%d EM iterations; "
                        "raise samplers.gmm.max_iter for a closer fit.", self.max_iter)
        self._state = {"weights": torch.from_numpy(em.weights_),
                       "means": torch.from_numpy(em.means_),
                       "covariances": torch.from_numpy(em.covariances_)}

    def state(self) -> dict[str, Tensor]:
        return dict(self._state)

    def load(self, state: Mapping[str, Tensor], latent: int) -> None:
        k = self.n_components
        shapes = {"weights": (k,), "means": (k, latent),
                  "covariances": (k, latent, latent) if self.covariance == "full" else (k, latent)}
        _check_tensors(state, shapes)
        weights, covariances = state["weights"].double(), state["covariances"].double()
        if (weights < 0).any() or abs(weights.sum().item() - 1) > 1e-6:
            raise ValueError("its mixture weights are not a probability vector")
        positive = (torch.linalg.cholesky_ex(covariances).info == 0).all() if (
            self.covariance == "full") else (covariances > 0).all()
        if not positive:
            raise ValueError("a component's covariance is not positive definite")
        self._state = {name: state[name].double() for name in shapes}

    def distribution(self) -> Distribution:
        weights, means, cov = (self._state[k] for k in ("weights", "means", "covariances"))
        components = (MultivariateNormal(means, covariance_matrix=cov)
                      if self.covariance == "full" else Independent(Normal(means, cov.sqrt()), 1))
        return MixtureSameFamily(Categorical(probs=weights), components)

    def sample(self, n: int) -> Tensor:
        return self.distribution().sample((n,)).float()


def fit_by_likelihood(sampler: Sampler, net: nn.Module, points: Tensor,
                      each_epoch: Callable[[int, float], None] | None = None) -> float:
    """Fit ``net`` (with ``log_prob``) to ``points`` by maximum likelihood with Adam, in the
    ``sampler``'s ``epochs`` of shuffled minibatches of ``batch_size`` at learning rate ``lr``,
    from its ``seed``; ``each_epoch(epoch, mean -log p)`` after each epoch. Returns the last
    epoch's mean -log p; a non-finite loss is an ``ArgumentError`` naming ``lr``."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(net.parameters(), lr=sampler.lr)
    generator = torch.Generator().manual_seed(sampler.seed)
    # A bar over every minibatch: an epoch of a PixelCNN on 50,000 code maps takes minutes on a
    # CPU, and the epoch's line alone left the command silent that long.
    per_epoch = math.ceil(len(points) / sampler.batch_size)
    with tqdm(total=sampler.epochs * per_epoch, unit="batch",
              desc=f"fitting {type(sampler).__name__} ({sampler.epochs} epochs)") as bar:
        for epoch in range(sampler.epochs):
            total = 0.0
            for batch in torch.randperm(len(points), generator=generator).split(
                    sampler.batch_size):
                loss = -net.log_prob(points[batch]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                bar.update()
            if not math.isfinite(total):
                fail(sampler, "lr", sampler.lr, f"fitting diverged at it in epoch {epoch + 1} "
                     "(a non-finite loss); a lower learning rate")
            if each_epoch is not None:
                each_epoch(epoch, total / len(points))
    return total / len(points)


class FlowSampler(Sampler):
    """A masked autoregressive flow (``priors.flow.FlowPrior``: ``length`` steps of MADEs with
    ``hidden`` layers) on the points standardised per dimension, fitted by Adam (learning rate
    ``lr``) on minibatches of ``batch_size`` for ``epochs`` passes; initialised and shuffled from
    ``seed``."""

    @checked
    def __init__(self, length: PositiveInt = 4, hidden: Sequence[PositiveInt] = (256, 256),
                 epochs: PositiveInt = 50, batch_size: PositiveInt = 256,
                 lr: PositiveFloat = 1e-3, seed: NonNegativeInt = 0) -> None:
        self.length, self.hidden, self.epochs = length, list(hidden), epochs
        self.batch_size, self.lr, self.seed = batch_size, lr, seed
        self._flow: Any = None
        self._loc = self._scale = torch.zeros(0)

    def describe(self) -> str:
        return f"a masked autoregressive flow of {self.length} steps"

    def _build(self, latent: int) -> Any:
        from vae_lightning.priors.flow import FlowPrior

        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return FlowPrior(latent, self.length, self.hidden)

    def fit(self, z: Tensor) -> None:
        z = z.float()
        self._loc, self._scale = z.mean(0), z.std(0).clamp_min(1e-6)
        u = (z - self._loc) / self._scale
        flow = self._build(z.shape[1])
        nll = fit_by_likelihood(self, flow, u)
        log.info("Flow sampler fitted: mean -log density %.4f (standardised points) after %d "
                 "epochs.", nll, self.epochs)
        self._flow = flow.eval()

    def state(self) -> dict[str, Tensor]:
        return {"loc": self._loc, "scale": self._scale,
                **{f"flow.{k}": v for k, v in self._flow.state_dict().items()}}

    def load(self, state: Mapping[str, Tensor], latent: int) -> None:
        flow = self._build(latent)
        shapes = {"loc": (latent,), "scale": (latent,),
                  **{f"flow.{k}": tuple(v.shape) for k, v in flow.state_dict().items()}}
        _check_tensors(state, shapes)
        if (state["scale"] <= 0).any():
            raise ValueError("its scales are not positive")
        flow.load_state_dict({k[5:]: state[k] for k in shapes if k.startswith("flow.")})
        self._flow, self._loc, self._scale = flow.eval(), state["loc"], state["scale"]

    def sample(self, n: int) -> Tensor:
        with torch.no_grad():
            return self._loc + self._scale * self._flow.sample(n)


def _check_tensors(state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse (``ValueError``) a state whose names, shapes or values are not ``shapes``' finite
    real tensors."""
    if set(state) != set(shapes):
        raise ValueError(f"it holds the tensors {sorted(state)[:8]}, not {sorted(shapes)[:8]}")
    for name, shape in shapes.items():
        tensor = state[name]
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{name} is not a tensor of real numbers")
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {list(tensor.shape)}, not {list(shape)}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} holds NaN or infinite values")


def fitted_path(ckpt_path: str | Path, name: str) -> Path:
    """Where the sampler ``name`` fitted for a checkpoint is saved: beside it,
    ``<checkpoint>.<name>.pt``."""
    path = Path(ckpt_path)
    return path.with_name(f"{path.name}.{name}.pt")


def digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (a checkpoint's: what a fitted sampler belongs to)."""
    sha = hashlib.sha256()
    with open_regular(path, CheckpointError, "a checkpoint (.ckpt) file") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digested(path: str | Path, load: Callable[[], Any]) -> tuple[Any, str]:
    """``load()`` (what is read from the checkpoint ``path``: its model) and the SHA-256 of the
    file it was read from: the digest is taken before and checked after, so that a last.ckpt
    that a run still training writes again in between is refused (``CheckpointError``) rather
    than the new file's digest naming the old file's model (a stopped evaluation's batches, a
    fitted sampler, vae-encode's record then belonged to another model than they said)."""
    try:
        before = digest(path)
    except CheckpointError:  # not a readable file: the load's own words (a URL, a directory)
        load()
        raise
    found = load()
    if digest(path) != before:
        raise CheckpointError(
            f"Checkpoint {path} changed while it was read (written again by a run still "
            "training?): nothing was done with it. Use a copy of it, or run the command again "
            "once the run has written it.")
    return found, before


def save(sampler: Sampler, name: str, path: Path, checkpoint_sha256: str, latent: int,
         points: int) -> None:
    """Write the fitted ``sampler`` to ``path`` atomically (``UnwritableError`` if it cannot)."""
    from vae_lightning.checkpoints import AtomicCheckpointIO

    payload = {"format": FORMAT, "version": VERSION, "sampler": name,
               "options": sampler.options(), "checkpoint_sha256": checkpoint_sha256,
               "latent": latent, "points": points,
               "state": {k: v.detach().cpu() for k, v in sampler.state().items()}}
    AtomicCheckpointIO().save_checkpoint(payload, path)


def load(sampler: Sampler, name: str, path: Path, checkpoint_sha256: str,
         latent: int) -> str | None:
    """Load the fitted state at ``path`` into ``sampler`` if it was fitted, with these options,
    for this checkpoint, and return None; else return why it is not used (to fit anew). A file
    that is not a fitted sampler, or whose tensors do not fit, is refused
    (``CheckpointError``)."""
    saved = read(path)
    if saved.get("sampler") != name or saved.get("options") != sampler.options():
        return "its options differ from these"
    if saved.get("checkpoint_sha256") != checkpoint_sha256:
        return "the checkpoint changed since it was fitted"
    if saved.get("latent") != latent:
        return "it was fitted for another latent size"
    try:
        sampler.load(saved.get("state") or {}, latent)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"The fitted sampler {path} cannot be used: {err}. Delete it, or "
                              "fit the sampler anew with refit=true.") from None
    return None


def read(path: Path) -> dict[str, Any]:
    """The content of a fitted-sampler file, read with ``weights_only=True``."""
    with open_regular(path, CheckpointError, "a fitted sampler (.pt) file") as file:
        try:
            saved = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:
            saved = None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get(
            "version") != VERSION or not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{path} is not a fitted sampler of this version of vae-lightning "
                              "(it cannot be read, or holds something else). Delete it, or fit "
                              "the sampler anew with refit=true.")
    return saved
