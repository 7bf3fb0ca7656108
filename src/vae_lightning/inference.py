"""What a trained VAE offers its user (``module.VAE`` inherits it): q(z|x) and p(x|z) as
torch.distributions objects, samples, reconstructions, interpolations and the importance-weighted
log-likelihood; and, for a model conditional on a class label, the labels handed to the parts
that depend on them (``parts.Conditional``) around every use.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from vae_lightning.objectives import importance_weighted
from vae_lightning.objectives.base import over_labels
from vae_lightning.parts import latent_path


class Inference:
    """The user's methods of a VAE over its ``encoder``, ``decoder`` and ``prior`` on its
    ``device``; ``_conditional`` are its parts that depend on a label in 0..``classes``-1.
    ``trained_on``: the kind of y a conditional model was trained on, ``"labels"`` or
    ``"vectors"`` (condition vectors), as a loaded model's run records it
    (``rebuild.trained_on``); None (a model built in Python): either is taken."""

    trained_on: str | None = None

    @contextlib.contextmanager
    def given(self, y: Tensor | None) -> Iterator[None]:
        """Hand the labels ``y`` ``[batch]`` to the parts that depend on them
        (``parts.Conditional``) while the block runs, then give them back the labels of any
        block around it (an objective that sums over the classes nests them); a model without
        such parts ignores ``y``."""
        if not self._conditional:
            yield
            return
        previous = getattr(self, "_given_labels", None)  # an outer block's, restored after
        try:  # labels a part refuses (a class out of range) are not kept: the finally restores
            y = None if y is None else y.to(self.device)
            for part in self._conditional:
                part.given(y)
            self._given_labels = y
            yield
        finally:
            self._given_labels = previous
            for part in self._conditional:
                part.given(previous)

    def labels_of_data(self, y: Tensor | None) -> Tensor | None:
        """A data batch's labels ``y`` as this model takes them: ``y`` for a model that depends
        on a label or condition vector, None for one that does not (the data modules serve
        labels, or -1, to every model; a user's ``y`` for such a model is refused instead)."""
        return y if self._conditional else None

    def labels(self, y: Tensor | int | None, n: int, what: str = "sample") -> Tensor | None:
        """``n`` labels on the model's device for ``what`` (a method's name): ``y``, one class
        for all or one per item (or floats: one condition vector for all, or one per item); for
        ``sample`` given none, the classes in turn (0, 1, ..., K-1, 0, ...), so that a grid of
        K columns shows one class per column; None for an unconditional model, which refuses
        a ``y`` (it would be ignored: pass a data batch's labels through ``labels_of_data``)."""
        if not self._conditional:
            if y is not None:
                raise ValueError(f"{what}: this model is not conditional on a label "
                                 "(model.classes is null), so y would be ignored; leave y out.")
            return None
        # The kind of y by its numbers, whatever holds them (a tensor, a list, a NumPy array or
        # scalar, a float): a NumPy float vector was taken for a label, a float for a vector.
        try:
            value = None if y is None or isinstance(y, bool) else torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{what}: y={y!r} is neither a class label (an integer, or one per "
                             "item) nor condition vectors (numbers).") from None
        vectors = value is not None and value.is_floating_point()
        if self.trained_on == "vectors" and not vectors:
            # A label would be read as its unit vector, which need be no condition the model
            # saw (a pose, a measurement); so would the unit vectors in turn without y.
            raise ValueError(f"{what}: y={y!r}: this model was trained on condition vectors "
                             f"(data.condition), not class labels; give y, {self.classes} "
                             "numbers (one vector for all, or one per item).")
        if self.trained_on == "labels" and vectors:
            raise ValueError(f"{what}: y={y!r}: this model was trained on class labels, not "
                             "condition vectors (one-hot labels are all it saw); give classes "
                             f"in 0..{self.classes - 1}.")
        if y is None:
            if what != "sample":
                raise ValueError(f"{what}: this model is conditional on a class label (0.."
                                 f"{self.classes - 1}): give the labels, y=...")
            return torch.arange(n, device=self.device) % self.classes
        if value is None or value.dtype == torch.bool:  # True, NumPy's or a tensor of them
            raise ValueError(f"{what}: y={y!r} is a truth value; give a class (0.."
                             f"{self.classes - 1}) as an integer, or condition vectors.")
        if value.dim() == 0 and not vectors:  # one class for all: an int, NumPy's or a tensor's
            return torch.full((n,), int(value), device=self.device)
        y = value.to(self.device)
        if y.is_floating_point():  # condition vectors: one [K] for all, or one per item [n, K]
            return y.expand(n, -1) if y.dim() == 1 else y
        return y.long()

    def _inputs(self, x: Tensor) -> Tensor:
        """``x`` as float32 on the model's device: one image of ``data_shape`` or a batch of
        them. Integer pixels (0..255) are refused rather than read as values up to 255 (the
        model was trained on pixels divided by ``data.scale``); booleans are binary pixels.
        A model of counts (a likelihood of counts) takes integer or float counts."""
        x = torch.as_tensor(x)
        counts = self.decoder.likelihood.counts
        if not (x.is_floating_point() or x.dtype == torch.bool or counts):
            raise ValueError(
                f"x is {x.dtype}: the model takes float pixels in the range it was trained on "
                "([0, 1]: integer pixels divided by data.scale, 255 unless the run set it); "
                "give e.g. x.float() / 255.")
        shape = tuple(self.data_shape or ())
        if shape and (x.dim() not in (len(shape), len(shape) + 1)
                      or tuple(x.shape[-len(shape):]) != shape):
            # Feature vectors [N, D] are served as [N, 1, 1, D] (data=array): said so.
            what = (f"vectors of {shape[-1]} values, served as {list(shape)} (a batch [N, "
                    f"{shape[-1]}] is x.reshape(-1, {', '.join(map(str, shape))})), "
                    if shape[:-1] == (1, 1) else f"images of shape {list(shape)}, ")
            raise ValueError(f"x has shape {list(x.shape)}: this model takes {what}one or a "
                             f"batch [B, {', '.join(map(str, shape))}].")
        x = x.to(self.device, torch.float32)
        # A value the model never saw scores as a number, not an error: -x or x * 255 gave
        # bounds better than the real images', NaN a NaN.
        if not bool(torch.isfinite(x).all()):
            where = ""
            if x.dim() > len(shape):  # a batch: which of its points (a row of missing readings)
                bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
                where = (f", in {len(bad)} of the batch's {len(x)} points (index "
                         f"{', '.join(map(str, bad[:10]))}{', ...' if len(bad) > 10 else ''}: "
                         "drop or fill them)")
            raise ValueError(f"x holds {int((~torch.isfinite(x)).sum())} values that are not "
                             f"finite (NaN or inf){where}: the model takes finite numbers.")
        if counts and x.numel() and (x.min() < 0 or bool((x != x.round()).any())):
            raise ValueError(
                f"x holds values that are not counts (the smallest {x.min().item():.6g}): the "
                f"model's likelihood, {type(self.decoder.likelihood).__name__}, is a "
                "distribution of counts, non-negative integers.")
        if self.pixel_values() and x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"x holds values in [{x.min().item():.6g}, {x.max().item():.6g}]: the model "
                f"takes pixels in [0, 1] (its likelihood, {type(self.decoder.likelihood).__name__}"
                ", is of pixel values); divide integer pixels by 255 (data.scale).")
        return x

    def _one(self, x: Tensor) -> bool:
        """Whether ``x`` (as ``_inputs`` gives it) is one image of ``data_shape``, without a
        batch dimension: ``len(x)`` is then its first axis (its channels), not the number of
        images, which a conditional model's labels and the estimate are counted by."""
        return x.dim() == len(tuple(self.data_shape or ()))

    def pixel_values(self) -> bool:
        """Whether the model's data are pixel values in [0, 1]: any likelihood but one of counts
        or one of real numbers with an unbounded mean (a Gaussian with
        mean_activation=identity), the only kinds that integer and float feature vectors
        (data=array's ``counts`` and ``real_values``) are trained with
        (``run_checks.warn_about_the_likelihood`` refuses the others); the model keeps no record
        of its data, so a model of real numbers takes any finite values, as its data may be."""
        likelihood = self.decoder.likelihood
        return not likelihood.counts and (
            likelihood.support is not constraints.real
            or getattr(likelihood, "mean_activation", "identity") != "identity")

    def encode(self, x: Tensor, y: Tensor | int | None = None) -> Distribution:
        """q(z|x) for a batch of images ``x`` ``[B, C, H, W]`` in the model's input range (given
        their labels ``y``, for a conditional model: see ``sample``)."""
        x = self._inputs(x)
        with self.given(self.labels(y, 1 if self._one(x) else len(x), "encode")):
            return self.encoder(x)

    def decode(self, z: Tensor, y: Tensor | int | None = None) -> Distribution:
        """p(x|z) for latent points ``z`` ``[..., B, latent]``: a distribution over images (given
        the labels ``y`` of the B points, for a conditional model: see ``sample``)."""
        # float32, as _inputs gives x: a NumPy array (float64) or integers failed in a matmul.
        z = torch.as_tensor(z).to(self.device, torch.float32)
        if z.dim() == 0 or z.shape[-1] != self.latent:
            raise ValueError(f"z has shape {list(z.shape)}: this model's latent points are "
                             f"{self.latent} numbers, [..., {self.latent}].")
        # As _inputs refuses x: a NaN or infinite z decoded to NaN images, silently (the
        # docs' decode(q.mean) of a posterior whose mean is not finite: the Cauchy's).
        if not bool(torch.isfinite(z).all()):
            raise ValueError(
                f"z holds {int((~torch.isfinite(z)).sum())} values that are not finite (NaN or "
                "inf): the model's latent points are finite numbers. A posterior without a "
                "finite mean (a Cauchy's q.mean is NaN) has a location: "
                "model.encoder.location(q).")
        with self.given(self.labels(y, z.shape[-2] if z.dim() > 1 else 1, "decode")):
            return self.decoder(z)

    @torch.no_grad()
    def images(self, z: Tensor, mean: bool = True, y: Tensor | int | None = None) -> Tensor:
        """The images of latent points ``z`` ``[..., latent]``: E[x|z], the mean of p(x|z)
        (``mean``), or a draw x ~ p(x|z) (given ``y``, for a conditional model)."""
        likelihood = self.decode(z, y)
        return likelihood.mean if mean else likelihood.sample()

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, y: Tensor | int | None = None) -> Tensor:
        """``n`` images from the model, ``[n, C, H, W]``: z ~ p(z), then E[x|z] (``mean``) or a
        draw x ~ p(x|z). A conditional model draws z ~ p(z|y), x ~ p(x|z, y) for the class
        ``y`` (one for all, or one per image; default: the classes in turn, 0..K-1, 0, ...)."""
        n = _count(n, "sample", "n", "the number of images")
        y = self.labels(y, n, "sample")
        with self.given(y):
            z = self.prior.sample(n)
        return self.images(z, mean, y)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | int | None = None) -> Tensor:
        """E[x | z = E_q[z|x]]: each image decoded from its posterior mean (given its label
        ``y``, for a conditional model)."""
        x = self._inputs(x)
        y = self.labels(y, 1 if self._one(x) else len(x), "reconstruct")
        return self.images(self.encoder.location(self.encode(x, y)), y=y)

    @torch.no_grad()
    def interpolate(self, x1: Tensor, x2: Tensor, steps: int = 10,
                    y: Tensor | int | None = None) -> Tensor:
        """Images along the path between the posterior locations of ``x1`` and ``x2`` (two
        images ``[C, H, W]``, or two batches ``[B, C, H, W]``): ``[steps, (B,) C, H, W]``,
        from x1's end to x2's (for a conditional model, all given the labels ``y``). The path
        is the straight line, or the great circle on a sphere (``model=svae``); a latent space
        of one-hot codes or a codebook, which a line leaves, is refused
        (``parts.latent_path``)."""
        steps = _count(steps, "interpolate", "steps", "the number of images along the path, "
                       "its two ends included", least=2)
        x1, x2 = self._inputs(x1), self._inputs(x2)
        if x1.shape != x2.shape:
            raise ValueError(f"interpolate: x1 has shape {list(x1.shape)} and x2 "
                             f"{list(x2.shape)}: give two images, or two batches of as many.")
        one = self._one(x1)  # one image: a batch of one, the batch dimension dropped at the end
        x1, x2 = (x[None] if one else x for x in (x1, x2))
        y = self.labels(y, len(x1), "interpolate")
        z1, z2 = (self.encoder.location(self.encode(x, y)) for x in (x1, x2))
        t = torch.linspace(0.0, 1.0, steps, device=self.device).view(-1, *[1] * z1.dim())
        path = self.images(latent_path(self.prior, z1, z2, t), y=y)
        return path[:, 0] if one else path

    def seeded(self, seed: int | None, method: str) -> contextlib.AbstractContextManager:
        """A context whose random draws come from ``seed`` (an integer >= 0), the global stream
        left as it was; no change for None: a method's ``seed``, for scores that are the same
        on every call (a threshold on them moved by a nat between runs without one)."""
        if seed is None:
            return contextlib.nullcontext()
        seed = _count(seed, method, "seed", "the seed of its draws (or None)", least=0)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.random.fork_rng())
        torch.manual_seed(seed)
        return stack

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, k: int = 5000, chunk: int | None = None,
                       y: Tensor | int | None = None, seed: int | None = None) -> Tensor:
        """The importance-weighted estimate of log p(x) per image, in nats, from k samples of
        q(z|x) (Burda et al. 2015), scored ``chunk`` at a time (None: ``auto_chunk``): what
        ``eval.py`` reports. For a conditional model, of log p(x|y) given the labels ``y``
        (required: the bound is of x given its own label); for a model of the labels (M2)
        without ``y``, of log p(x) with the classes enumerated (``over_labels``). ``seed``:
        the draws' (``seeded``), else the global stream's."""
        k = _count(k, "log_likelihood", "k", "the number of samples of q(z|x) per image")
        if chunk is not None:
            chunk = _count(chunk, "log_likelihood", "chunk", "samples per decoder pass (or None)")
        with self.seeded(seed, "log_likelihood"):
            return self._log_likelihood(x, k, chunk, y)

    def _log_likelihood(self, x: Tensor, k: int, chunk: int | None,
                        y: Tensor | int | None) -> Tensor:
        x = self._inputs(x)
        one = self._one(x)  # one image: its estimate, a 0-d tensor (not one per channel)
        x = x[None] if one else x
        if not len(x):  # no images: no estimates (the estimators cannot shape an empty batch)
            return x.new_zeros(0)
        if (self.decoder.likelihood.support is constraints.boolean
                and not bool(((x == 0) | (x == 1)).all())):
            # As training warns (run_checks.warn_about_grey_pixels): a number, not log p(x).
            warnings.warn(
                f"log_likelihood: x holds pixels other than 0 and 1, and the model's likelihood "
                f"({type(self.decoder.likelihood).__name__}) is of binary pixels: its "
                "log-likelihood of grey pixels is not normalised, so the estimate is not a log "
                "probability in nats. Binarize them as the model's data were (x.bernoulli(), "
                "dynamic binarization; or (x > 0.5).float()).", UserWarning,
                stacklevel=3)  # the caller's line: past torch.no_grad's wrapper
        labels = self.objective.latent_labels(x) if y is None else None
        if labels is not None:
            estimate = over_labels(self, x, k, chunk, *labels)[1]
        else:
            with self.given(self.labels(y, len(x), "log_likelihood")):
                estimate = importance_weighted(self, x, k, chunk)[1]
        return estimate[0] if one else estimate


def _count(value: object, method: str, name: str, what: str, least: int = 1) -> int:
    """``value`` of a method's argument ``name`` as an int: an integer (a Python, NumPy or 0-d
    tensor one) of at least ``least``; anything else (a float, a truth value) a ValueError."""
    try:
        truth = isinstance(value, bool) or getattr(value, "dtype", None) == torch.bool
        count = None if truth else operator.index(value)
    except TypeError:
        count = None
    if count is None or count < least:
        raise ValueError(f"{method}: {name}={value!r}; give {what}, an integer >= {least}.")
    return count
