"""Draw images from a trained model: ``vae-sample ckpt_path=<run>/checkpoints/last.ckpt n=64``
(or ``python -m vae_lightning.sample ...``) writes ``samples.png`` (a grid of the first
``GRID_MAX``) and ``samples.npy`` (float32 ``[n, C, H, W]``) into ``<run dir>/samples/``, or
``output_dir``; for a model of feature vectors (data that are not images, as the checkpoint
records them) the array only.

z comes from the model's prior (``sampler=prior``), or from a density fitted after training to
the posterior locations of the training images (``sampler=gmm``, ``sampler=flow``: the options
of ``samplers``; ``vae_lightning.samplers``), then into ``<run dir>/samples/<sampler>/``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor

from vae_lightning import rundir
from vae_lightning import samplers as fitted
from vae_lightning.args import (
    ArgumentError,
    NonNegativeInt,
    PositiveInt,
    Range,
    checked,
    fail,
    within,
)
from vae_lightning.callbacks.traversals import Span
from vae_lightning.checkpoint_data import checked_data
from vae_lightning.checkpoints import DATA_KEY
from vae_lightning.data.npy import atomic_npy
from vae_lightning.divergence import refuse_nonfinite
from vae_lightning.errors import CheckpointError, ConfigError, NonFiniteLossError
from vae_lightning.files import kind, writable_directory
from vae_lightning.log_likelihood import posterior_mean
from vae_lightning.module import VAE
from vae_lightning.parts import Conditional, confined_space
from vae_lightning.rebuild import device_of, load_model
from vae_lightning.samplers import Sampler

log = logging.getLogger(__name__)

GRID_MAX = 400  # images drawn in samples.png; samples.npy holds all n
RECORD_NAME = "samples.json"  # beside them: what drew them; its keys RECORD say it is ours
RECORD = ("checkpoint_sha256", "n", "seed", "sampler", "files")
CHUNK = 1024  # images decoded per pass: memory stays bounded whatever n


def posterior_locations(model: VAE, batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """The location of q(z|x) (``Encoder.location``: a Gaussian posterior's mean) of each point
    ``x`` of ``batches`` given its label ``y`` (a data module's ``evaluation_batches``),
    ``[N, latent]`` float32 on the CPU: what the fitted samplers are fitted to and
    ``vae-encode`` exports."""
    return posterior_statistics(model, batches, stddevs=False)[0]


def posterior_statistics(model: VAE, batches: Iterable[tuple[Tensor, Tensor]],
                         means: bool = False, stddevs: bool = True
                         ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``posterior_locations``, q(z|x)'s standard deviations ``[N, latent]`` float32 (None
    where the posterior family has none in closed form: ``Family.stddev``, or not asked for:
    ``stddevs``, which the fitted samplers do not read: half the memory of a large latent
    space's, 0.6 GB for a VQ-VAE's MNIST code maps) and, with ``means``, E_q[z] ``[N, latent]``
    float64 (``log_likelihood.posterior_mean``: the statistic of the active units,
    ``log_likelihood.active_units``; else None), in one pass. No batches (an empty split) give
    no rows: ``[0, latent]``, and no standard deviations (None)."""
    locations, scales, expected = [], [], []
    with torch.no_grad():
        for xs, ys in batches:
            q = model.encode(xs, model.labels_of_data(ys))
            locations.append(model.encoder.location(q).float().cpu())
            std = model.encoder.posterior.stddev(q) if stddevs else None
            scales.append(None if std is None else std.float().cpu())
            if means:
                expected.append(posterior_mean(model.encoder, q).cpu().double())
    if not locations:  # a split without points (data.val_size=0): no rows, not torch.cat's error
        empty = torch.zeros(0, model.latent)
        return empty, None, empty.double() if means else None
    locations = torch.cat(locations)
    refuse_nonfinite(locations, "the posterior locations", model)
    expected = torch.cat(expected) if means else None
    if not scales or any(std is None for std in scales):
        return locations, None, expected
    deviations = torch.cat(scales)
    refuse_nonfinite(deviations, "the posterior standard deviations", model)
    return locations, deviations, expected



class Sampling:
    """``n`` draws of z decoded to E[x|z] (``mean``) or to x ~ p(x|z), from the random state
    ``seed``, on ``device`` (``auto``: CUDA when available). ``trusted``: see
    ``rebuild.build_trusted``.

    z ~ p(z) with ``sampler="prior"``; else z from the fitted sampler ``samplers[sampler]``
    (``vae_lightning.samplers``: ``gmm``, ``flow``; ``pixelcnn``: a VQ-VAE's prior over code
    maps, ``vae_lightning.pixelcnn``), fitted to the posterior locations of the training split (read
    ``batch_size`` images at a time from ``data_root`` / ``data_path``, or where the run's
    record says, as ``vae-eval`` reads its data, and checked against the checkpoint's record
    unless ``allow_other_data``), or loaded from the file beside the checkpoint where it was
    saved by an earlier fit with the same options (``refit``: fit anew all the same).

    A conditional model (``model.classes``) draws z ~ p(z|y) and x ~ p(x|z, y) for the class
    ``y`` (a model trained on labels), or for the condition vector ``y`` (a list of
    ``model.classes`` numbers, required for a model trained on ``data.condition``); without
    ``y``, a model of labels draws for the classes in turn (0, 1, ..., K-1, 0, ...). The
    kind of y is the one the run config records (``Inference.trained_on``).

    The images are decoded ``CHUNK`` at a time straight into ``samples.npy`` on disk, so memory
    does not grow with n; n is refused before anything is drawn or fitted when the array would
    not fit on the output directory's disk. ``samples.json`` beside them records what drew
    them (checkpoint and its SHA-256, n, seed, sampler, y, the files written); an
    ``output_dir`` one gives, where a file this call writes is there without such a record, is
    refused, not overwritten.

    ``traverse``: also ``traversals.png`` (and ``traversals.gif`` with ``traverse_gif``), each
    latent dimension of ``traverse_bases`` posterior locations set to ``traverse_steps`` values
    on [-``traverse_span``, ``traverse_span``], the dimensions ranked by their mean KL over the
    first ``traverse_points`` training images (read as for a fitted sampler), the
    ``traverse_dims`` largest (null: all); ``callbacks.traversals.write_traversals``."""

    @checked
    def __init__(self, ckpt_path: str, n: PositiveInt = 64, mean: bool = True,
                 seed: NonNegativeInt = 0, output_dir: str | None = None, device: str = "auto",
                 trusted: Sequence[str] = (), sampler: str = "prior",
                 samplers: Mapping[str, Sampler] | None = None, refit: bool = False,
                 data_root: str | None = None, data_path: str | None = None,
                 allow_other_data: bool = False, batch_size: PositiveInt = 500,
                 traverse: bool = False, traverse_steps: Annotated[int, Range(ge=2)] = 10,
                 traverse_span: Span = 2.5, traverse_dims: PositiveInt | None = None,
                 traverse_gif: bool = False, traverse_bases: PositiveInt = 8,
                 traverse_points: PositiveInt = 1000,
                 y: NonNegativeInt | Sequence[float] | None = None) -> None:
        self.ckpt_path, self.n, self.mean, self.seed = ckpt_path, n, mean, seed
        self.output_dir, self.trusted = output_dir, tuple(trusted)
        self.device = device_of("sample", device)
        self.samplers = dict(samplers or {})
        if sampler != "prior" and sampler not in self.samplers:
            fail(self, "sampler", sampler, "prior (the model's own) or one of samplers: "
                 + ", ".join(self.samplers))
        self.sampler, self.refit = sampler, refit
        self.data_root, self.data_path = data_root, data_path
        self.allow_other_data, self.batch_size = allow_other_data, batch_size
        if traverse_gif and not traverse:  # was ignored: no GIF, and no word
            fail(self, "traverse_gif", traverse_gif, "false without traverse=true (the GIF "
                 "animates the traversals: add traverse=true)")
        self.traverse = dict(steps=traverse_steps, span=traverse_span, dims=traverse_dims,
                             gif=traverse_gif, bases=traverse_bases) if traverse else None
        self.traverse_points = traverse_points
        self.y = y if y is None or isinstance(y, int) else [float(v) for v in y]

    def __call__(self) -> Path:
        """Write the array and the grid; return the folder."""
        from vae_lightning.callbacks.images import drawable, image_figure, not_drawn, tile
        from vae_lightning.plotting import pyplot

        samples = rundir.path(rundir.of_checkpoint(self.ckpt_path), "samples")
        out = (Path(self.output_dir) if self.output_dir
               else samples if self.sampler == "prior" else samples / self.sampler)
        writable_directory(out, "output_dir")
        # The digest of the file loaded (samplers.digested), which its fitted sampler and
        # samples.json are recorded under.
        (model, config, checkpoint), self._sha256 = fitted.digested(
            self.ckpt_path, lambda: load_model(self.ckpt_path, VAE, self.device, self.trusted))
        self._refuse_too_many(out, model.data_shape)
        self._check_class(model, config)
        if self.traverse is not None and (confined := confined_space(model.prior)):
            from vae_lightning.callbacks.traversals import refusal

            raise ConfigError(refusal("traverse=true", confined))
        # Feature vectors, or images of channels no picture shows: samples.npy alone.
        of_images = checkpoint.get(DATA_KEY, {}).get("images", True)
        pictures = of_images and drawable(model.data_shape)
        if self.traverse is not None and not pictures:
            why = (not_drawn(model.data_shape) if of_images else "the model's data are feature "
                   "vectors, not images: no picture of them is drawn")
            raise ConfigError(f"traverse=true: {why}; leave traverse out (false).")
        _check_out(out, ["samples.npy", *(["samples.png"] if pictures else []),
                         *(["traversals.png"] if self.traverse is not None else []),
                         *(["traversals.gif"] if self.traverse and self.traverse["gif"] else [])],
                   given=bool(self.output_dir))
        draw, source = self._z_source(model, config, checkpoint)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed)
        with atomic_npy(out / "samples.npy", (self.n, *model.data_shape)) as append:
            for start in range(0, self.n, CHUNK):
                count = min(CHUNK, self.n - start)
                y = self._classes(model, start, count)
                with torch.no_grad(), model.given(y):
                    z = draw(count)
                    self._refuse_fitted_draws(z, start)
                    images = model.images(z, self.mean, y).cpu()
                try:
                    refuse_nonfinite(images, f"samples {start}..{start + count - 1}", model)
                except NonFiniteLossError as err:
                    if self.sampler == "prior":
                        raise
                    raise NonFiniteLossError(
                        f"{err} Their z came from the fitted sampler "
                        f"{fitted.fitted_path(self.ckpt_path, self.sampler)} (|z| up to "
                        f"{z.abs().max().item():.3g}): if sampler=prior's samples are finite, "
                        "the fitted sampler is at fault: fit it anew with refit=true.") from None
                append(images.numpy())
        if not pictures:
            return self._record(out, source, ["samples.npy"])  # the array only, no picture
        shown = min(self.n, GRID_MAX)
        images = torch.from_numpy(np.load(out / "samples.npy", mmap_mode="r")[:shown].copy())
        cols = math.ceil(math.sqrt(shown))
        rows = math.ceil(shown / cols)
        padded = torch.cat([images, images.new_ones(rows * cols - shown, *images.shape[1:])])
        what = "means E[x|z]" if self.mean else "draws x ~ p(x|z)"
        first = f"the first {shown} of " if shown < self.n else ""
        fig = image_figure(tile(padded.reshape(rows, cols, *images.shape[1:])),
                           f"{first}{self.n} samples ({what}, z ~ {source}, seed {self.seed})")
        fig.savefig(out / "samples.png", dpi=100)
        pyplot().close(fig)
        if self.traverse is not None:
            from vae_lightning.callbacks.traversals import write_traversals

            x, y = (torch.cat(parts) for parts in zip(*self._training_images(
                model, config, checkpoint, limit=self.traverse_points)))
            torch.manual_seed(self.seed)
            with torch.no_grad():
                written = write_traversals(model, out, x.to(self.device), y=y.to(self.device),
                                           **self.traverse)
            return self._record(out, source, ["samples.npy", "samples.png",
                                              *(path.name for path in written)])
        return self._record(out, source, ["samples.npy", "samples.png"])

    def _record(self, out: Path, source: str, files: list[str]) -> Path:
        """Write ``samples.json`` (what drew the files of this call, which it names) into
        ``out``, and return ``out``: the record that lets a later call replace them."""
        rundir.write_json(out / RECORD_NAME, {
            "checkpoint": str(Path(self.ckpt_path).resolve()),
            "checkpoint_sha256": self._sha256,
            "n": self.n, "seed": self.seed, "mean": self.mean, "sampler": self.sampler,
            "z": source, "y": self.y, "files": files})
        return out

    def _z_source(self, model: VAE, config: dict[str, Any], checkpoint: dict[str, Any]
                  ) -> tuple[Callable[[int], Tensor], str]:
        """What draws n points z, and what they are drawn from, in words: the prior, or the
        fitted sampler (loaded from its file, or fitted and saved)."""
        if self.sampler == "prior":
            return model.prior.sample, ("p(z)" if model.classes is None else
                                        f"p(z|y), y = {self.y}" if self.y is not None else
                                        f"p(z|y), y = 0..{model.classes - 1} in turn")
        sampler = self.samplers[self.sampler]
        if confined := confined_space(model.prior, sampler.stays_in):
            raise ConfigError(f"sampler={self.sampler}: a fitted sampler is a density on all of "
                              f"R^{model.latent}, but the latent space of the model of "
                              f"{self.ckpt_path} is {confined}: its draws would fall where the "
                              "decoder was never trained; use sampler=prior.")
        if isinstance(model.prior, Conditional):
            # Fitted to the locations of every class's images, pooled, its draws decoded given
            # the classes in turn: each class's images were drawn from the other classes' z.
            raise ConfigError(
                f"sampler={self.sampler}: the prior of the model of {self.ckpt_path} is p(z|y), "
                f"one distribution per class ({type(model.prior).__name__}: "
                "model/prior=class_normal), and a sampler is fitted to the posterior locations "
                "of the training images of all classes pooled: a sample of class y would be "
                "decoded from z of the other classes. Use sampler=prior (z ~ p(z|y)).")
        try:
            why_not = within(f"samplers.{self.sampler}", lambda: sampler.check(model))
        except ArgumentError as err:
            raise ConfigError(str(err)) from None
        if why_not:
            raise ConfigError(f"sampler={self.sampler}: {why_not}.")
        path = fitted.fitted_path(self.ckpt_path, self.sampler)
        writable_directory(path.parent, "ckpt_path")  # before the fit: its result goes there
        sha256 = self._sha256
        why = "refit=true" if self.refit else (
            "none was saved" if not path.exists()
            else fitted.load(sampler, self.sampler, path, sha256, model.latent))
        if why is None:
            log.info("Fitted sampler %s loaded from %s.", self.sampler, path)
        else:
            z = self._posterior_locations(model, config, checkpoint)
            log.info("Fitting sampler %s (%s) to %d posterior locations (%s).", self.sampler,
                     sampler, len(z), why)
            try:
                within(f"samplers.{self.sampler}", lambda: sampler.fit(z))
            except ArgumentError as err:
                raise ConfigError(str(err)) from None
            fitted.save(sampler, self.sampler, path, sha256, model.latent, len(z))
            log.info("Fitted sampler saved to %s.", path)
        return sampler.sample, f"{sampler.describe()} fitted to q(z|x) of the training images"

    def _refuse_fitted_draws(self, z: Tensor, start: int) -> None:
        """Refuse draws z of a fitted sampler that are not finite (a tampered or corrupt file:
        finite float64 means beyond float32's range), naming its file, before they are decoded:
        the non-finite images they make would be blamed on the model's weights."""
        if self.sampler == "prior" or bool(torch.isfinite(z).all()):
            return
        bad = int((~torch.isfinite(z)).sum())
        raise CheckpointError(
            f"The fitted sampler {fitted.fitted_path(self.ckpt_path, self.sampler)} drew z "
            f"with {bad} values that are not finite (NaN or infinite) among samples "
            f"{start}..{start + len(z) - 1}: its fitted state is corrupt or was altered; "
            "nothing was written. Delete it, or fit the sampler anew with refit=true.")

    def _posterior_locations(self, model: VAE, config: dict[str, Any],
                             checkpoint: dict[str, Any]) -> Tensor:
        """The location of q(z|x) of every training image (``posterior_locations``)."""
        return posterior_locations(model, self._training_images(model, config, checkpoint))

    def _training_images(self, model: VAE, config: dict[str, Any], checkpoint: dict[str, Any],
                         limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The training images (the first ``limit``) and their labels, ``batch_size`` at a
        time, found and checked as ``vae-eval`` finds and checks its split's
        (``checkpoint_data``)."""
        datamodule = checked_data(config, checkpoint, self.ckpt_path, "train", "",
                                  trusted=self.trusted, data_root=self.data_root,
                                  data_path=self.data_path,
                                  allow_other_data=self.allow_other_data,
                                  batch_size=self.batch_size)[0]
        return datamodule.evaluation_batches("train", self.batch_size, limit=limit)

    def _check_class(self, model: VAE, config: dict[str, Any]) -> None:
        """``y`` names a class of a conditional model, or is a condition vector of its length
        (finite numbers), and only for such a model; and of the kind the model was trained on,
        as its run config records it (``data.condition``: condition vectors; else labels)."""
        if self.y is not None and model.classes is None:
            raise ConfigError(f"y={self.y}: the model of {self.ckpt_path} is not conditional on "
                              "a class label; leave y out (null).")
        if model.classes is None:
            return
        vectors = {"vectors": True, "labels": False}.get(model.trained_on)
        k = model.classes
        if vectors and not isinstance(self.y, list):
            # A label would be read as its unit vector, which need be no condition the model
            # saw (a pose, a measurement), as would the unit vectors in turn without y.
            given = f"y={self.y}" if self.y is not None else "y=null"
            raise ConfigError(
                f"{given}: the model of {self.ckpt_path} was trained on condition vectors "
                f"(data.condition={config['data']['condition']!r}), not class labels; give "
                f"the condition to draw for, y=[...] of {k} finite numbers.")
        if vectors is False and isinstance(self.y, list):
            # one-hot(y) is all it ever saw: other vectors are outside its training.
            raise ConfigError(
                f"y={self.y}: the model of {self.ckpt_path} was trained on class labels, not "
                f"condition vectors; give a class in 0..{k - 1}, or null for each in turn.")
        # Finite as the model reads them (float32: 1e39 is inf there, and was refused later,
        # "a condition vector holds a value that is not finite", naming no y).
        if isinstance(self.y, list) and (len(self.y) != k or not bool(
                torch.isfinite(torch.tensor(self.y, dtype=torch.float32)).all())):
            # A class or null only where the model may have been trained on labels.
            other = "" if vectors else f", or a class in 0..{k - 1}, or null"
            raise ConfigError(f"y={self.y}: a condition vector of this model is "
                              f"{k} finite numbers (model.classes; within float32's range); "
                              f"give as many{other}.")
        if isinstance(self.y, int) and self.y >= k:
            raise ConfigError(f"y={self.y}: the model is conditional on {k} classes; "
                              f"choose y in 0..{k - 1}, or null for each in turn.")

    def _classes(self, model: VAE, start: int, count: int) -> Tensor | None:
        """The classes (or condition vectors) of samples start..start+count of a conditional
        model: ``y``, or the classes in turn (0, 1, ..., K-1, 0, ...); None for an
        unconditional model."""
        if model.classes is None:
            return None
        if isinstance(self.y, list):
            return torch.tensor(self.y, device=self.device).expand(count, -1)
        if self.y is not None:
            return torch.full((count,), self.y, device=self.device)
        return torch.arange(start, start + count, device=self.device) % model.classes

    def _refuse_too_many(self, out: Path, shape: Sequence[int]) -> None:
        """Refuse an n whose float32 array would not fit on the output directory's disk."""
        needed = self.n * math.prod(shape) * 4
        existing = next(p for p in [out, *out.parents] if p.exists())
        free = shutil.disk_usage(existing).free
        if needed > free:
            raise ConfigError(
                f"n={self.n} samples of shape {list(shape)} make a {needed / 2**30:.3g} GiB "
                f"samples.npy, and {existing} has {free / 2**30:.3g} GiB free; nothing was "
                "drawn. Lower n, or choose an output_dir on a larger disk.")


def _check_out(out: Path, names: Sequence[str], given: bool) -> None:
    """Refuse, before any draw or fit, an output folder where one of ``names`` (the files this
    call writes) or the record is not a file; and an ``output_dir`` one gave where one of them
    would replace a file that no earlier vae-sample wrote (no record of one, ``samples.json``,
    beside it): output_dir=<a folder of one's own> replaced its samples.npy. The run's own
    ``samples/`` folders are vae-sample's (those written before the record was kept included)."""
    for path in (out / name for name in (*names, RECORD_NAME)):
        if kind(path) not in (None, "missing"):
            raise ConfigError(f"output_dir={out}: {path} is {kind(path)}, not a file; choose "
                              "another output_dir.")
    found = [out / name for name in names if kind(out / name) is None]
    if given and found and not _earlier_output(out):
        raise ConfigError(f"output_dir={out}: {found[0]} exists and is not the output of an "
                          f"earlier vae-sample (no record of one, {RECORD_NAME}, beside it: "
                          "written by another program, or by a vae-sample older than the "
                          "record): it would be replaced. Choose another output_dir, or move "
                          "the file away.")


def _earlier_output(out: Path) -> bool:
    """Whether ``out`` holds the record an earlier vae-sample wrote (a JSON object with the
    keys of ``RECORD``)."""
    try:
        record = json.loads((out / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and set(RECORD) <= set(record)


if __name__ == "__main__":
    from vae_lightning.cli import sample

    sample()
