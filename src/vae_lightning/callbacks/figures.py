"""The paper's figures, as PNG files in ``<run dir>/figures/`` and in the active loggers.

- ``manifold.png`` (Fig. 4, only when the latent space is 2-d): a grid of unit-square points mapped
  through the inverse Gaussian CDF to z, each decoded to its mean image; z1 grows to the right and
  z2 upwards, and the axes are labelled with the z of the cells they pass through. A latent space
  on the circle (a prior on the unit sphere, ``model=svae``) has no such grid: its manifold is
  the circle, decoded at evenly spaced angles;
- ``samples.png`` (Fig. 5): mean images of random draws from the prior;
- ``reconstructions.png``: validation inputs (odd rows) above their reconstructions (even rows),
  decoded from the posterior mean;
- ``latents.png``: posterior means of validation points, one colour per class, each named as the
  data module names its classes (else by its label number) (2-d directly, more dimensions projected
  on their first two principal components); data without labels are coloured by position in the
  split (Frey Face: frame order);
- ``curves.png`` (Fig. 2's axes): the bound on the training and validation data against the
  number of training samples seen, log x-axis, one point per epoch, and (dashed) the run's
  ``BoundCurve`` points, at log-spaced counts within the run;
- ``traversals.png`` (option ``traversals``): one row per latent dimension, ranked by its mean
  KL(q(z_j|x) || p(z_j)) over the validation points (largest first), each decoding the first
  point's posterior location with that dimension set to evenly spaced values; and
  ``traversals.gif`` (``traversal_gif``): the same traversals animated, a column per dimension
  and a row per base point.

Without a validation split (``data.val_size=0``) the reconstructions and the scatter use the test
split, and the curves show the training bound alone. Data that are not images (feature vectors)
get the curves and the scatter only. Images are drawn in grayscale or, with three
channels, in colour. This module holds the callback and Figs. 2, 4 and 5 and the reconstructions;
the shared image primitives are in ``callbacks.images``, the scatter in
``callbacks.latent_scatter`` and the traversals in ``callbacks.traversals``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor
from torch.distributions import Normal

from vae_lightning import rundir
from vae_lightning.args import NonNegativeInt, PositiveInt, checked
from vae_lightning.callbacks.images import (
    decode_mean,
    drawable,
    image_figure,
    not_drawn,
    tick_label,
    tile,
)
from vae_lightning.callbacks.latent_scatter import latents_figure
from vae_lightning.callbacks.traversals import (
    Span,
    Traversal,
    refusal,
    traversal,
    traversal_figure,
    traversal_gif,
)
from vae_lightning.errors import ConfigError
from vae_lightning.parts import confined_space
from vae_lightning.plotting import pyplot

log = logging.getLogger(__name__)


def manifold_grid(n: int) -> Tensor:
    """The z of an n x n manifold grid, ``[n, n, 2]``. Unit-square coordinates
    u_m = (m + 1/2) / n, m = 0..n-1, go through the standard normal inverse CDF; cell (i, j) (row i
    from the top, column j from the left) holds z = (icdf(u_j), icdf(u_{n-1-i})): z_1 grows to the
    right and z_2 grows upwards, as on a plot."""
    icdf = Normal(0.0, 1.0).icdf((torch.arange(n, dtype=torch.float32) + 0.5) / n)
    z1 = icdf.expand(n, n)  # varies along columns
    z2 = icdf.flip(0)[:, None].expand(n, n)  # varies along rows, top row largest
    return torch.stack([z1, z2], dim=-1)



@dataclass(frozen=True)
class Conditions:
    """The condition vectors (floats ``[m, D]``) of the first points of a data split, and the
    split's name, for the figures of a model trained on condition vectors (``data.condition``)."""

    vectors: Tensor
    split: str


def data_conditions(datamodule: Any, model: L.LightningModule,
                    most: int = 100) -> Conditions | None:
    """The condition vectors of the first ``most`` points of the first split that has points
    (validation, test, training), where a conditional model's data serve vectors; None where
    they serve labels, or the model is not conditional."""
    if model.classes is None:
        return None
    splits = getattr(datamodule, "splits", {})
    for split in ("val", "test", "train"):
        if split in splits and len(splits[split][1]):
            y = splits[split][1]
            if not torch.is_floating_point(y):
                return None
            return Conditions(y[:most].float().reshape(min(most, len(y)), -1),
                              SPLIT_NAMES.get(split, "training"))
    return None


def manifold_ticks(n: int, most: int = 10) -> list[int]:
    """The cells of an n-cell manifold axis whose z the axis names: every k-th from each end, k
    the smallest that names at most about ``most``, so the labels stay apart and are symmetric
    about the middle as the z are (cell n-1-m holds minus the z of cell m)."""
    step = math.ceil(n / most)
    half = range(0, (n + 1) // 2, step)
    return sorted({*half, *(n - 1 - m for m in half)})


def given(model: L.LightningModule, conditions: Conditions | None) -> tuple[Any, str]:
    """The one condition a conditional model's manifold is decoded with, and the title's words
    for it: the first data point's condition vector (``conditions``), else class 0; (None, "")
    for a model that is not conditional."""
    if model.classes is None:
        return None, ""
    if conditions is None:
        return 0, ", class 0"
    return conditions.vectors[0], f"\ngiven the condition vector of {conditions.split} point 1"


def manifold_figure(model: L.LightningModule, n: int = 20,
                    conditions: Conditions | None = None):
    """Fig. 4: the decoded n x n inverse-CDF grid (see ``manifold_grid`` for the order), its
    axes z1 (growing to the right) and z2 (growing upwards), labelled with the z of the cells
    they pass through, as the AEVB paper's manifolds are read. A conditional model's: given
    class 0, or a data point's condition vector (``given``)."""
    z = manifold_grid(n)
    y, words = given(model, conditions)
    picture = tile(decode_mean(model, z, y))
    fig = image_figure(picture, f"Learned 2-d manifold: E[x|z] at $z = \\Phi^{{-1}}(u)$, u on a "
                                f"{n}$\\times${n} grid" + words)
    ax = fig.axes[0]
    ax.axis("on")
    height, width = picture.shape[0] // n, picture.shape[1] // n
    cells = manifold_ticks(n)
    # Pixel k of the picture spans [k - 1/2, k + 1/2]: cell m's centre is at (m + 1/2) size - 1/2.
    ax.set_xticks([(j + 0.5) * width - 0.5 for j in cells],
                  [tick_label(z[0, j, 0]) for j in cells])
    ax.set_yticks([(i + 0.5) * height - 0.5 for i in cells],
                  [tick_label(z[i, 0, 1]) for i in cells])
    ax.tick_params(labelsize=8)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    fig.tight_layout()
    return fig


def circle_figure(model: L.LightningModule, n: int = 20,
                  conditions: Conditions | None = None):
    """Fig. 4 for a latent space on the unit circle S^1: E[x|z] at z = (cos t, sin t) for n^2
    evenly spaced angles t = 2 pi i / n^2, in reading order (row by row) from t = 0 (a
    conditional model's given one condition, ``given``)."""
    t = 2 * math.pi * torch.arange(n * n, dtype=torch.float32) / (n * n)
    z = torch.stack([t.cos(), t.sin()], -1).reshape(n, n, 2)
    y, words = given(model, conditions)
    picture = tile(decode_mean(model, z, y))
    title = "Learned manifold on the circle" + words
    return image_figure(picture, f"{title}\nE[x|z] at z = (cos t, sin t), t = 2$\\pi$i/{n * n}, "
                                 "i in reading order")


def samples_figure(model: L.LightningModule, n: int = 100,
                   conditions: Conditions | None = None):
    """Fig. 5: mean images of ``n`` draws from the prior, on a square-ish grid. A conditional
    model's: the classes in turn, or, for a model on condition vectors, column j given the
    condition vector of the data's point j (the first points' vectors in turn along the rows:
    a label's unit vector need be no condition the model saw)."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if conditions is not None and model.classes is not None:
        vectors = conditions.vectors[:cols]
        y = vectors[torch.arange(rows * cols) % len(vectors)]
        images = model.sample(rows * cols, y=y.to(model.device)).cpu()
        title = (f"Samples of p(x|y), column j given the condition vector of "
                 f"{conditions.split} point j (1..{len(vectors)})" if len(vectors) == cols else
                 f"Samples of p(x|y), given the condition vectors of {conditions.split} points "
                 f"1..{len(vectors)} in turn along the rows")
        return image_figure(tile(images.reshape(rows, cols, *images.shape[1:])), title)
    images = model.sample(rows * cols).cpu()  # a conditional model's: the classes in turn
    title = f"Random samples from the prior (Nz = {model.latent})"
    if model.classes is not None:
        title = (f"Samples of p(x|y), the classes in turn (columns: y = 0..{model.classes - 1})"
                 if cols == model.classes else
                 f"Samples of p(x|y), y = 0..{model.classes - 1} in turn along the rows")
    return image_figure(tile(images.reshape(rows, cols, *images.shape[1:])), title)


def spread(n: int, k: int) -> Tensor:
    """``min(k, n)`` indices of ``0..n-1`` spread evenly over them, first and last included."""
    return torch.linspace(0, n - 1, min(k, n)).round().long()


@torch.no_grad()
def reconstructions_figure(model: L.LightningModule, x: Tensor, per_row: int = 10,
                           y: Tensor | None = None):
    """Inputs ``x`` ``[B, C, H, W]`` (odd rows) above their reconstructions
    E[x | z = E_q[z|x]] (given their labels ``y``, for a conditional model)."""
    per_row = min(per_row, len(x))
    rows = max(1, len(x) // per_row)
    x = x[: rows * per_row]
    recon = model.reconstruct(x, None if y is None else model.labels_of_data(y[: rows * per_row])
                              ).cpu()
    pairs = torch.stack([x.cpu().reshape(rows, per_row, *x.shape[1:]),
                         recon.reshape(rows, per_row, *x.shape[1:])], 1)
    picture = tile(pairs.reshape(2 * rows, per_row, *x.shape[1:]))
    return image_figure(picture, "Inputs (odd rows), reconstructions (even rows)")



# The legend of each curve of ``Figures.curves``, and of ``callbacks.curve.BoundCurve``'s.
CURVE_LABELS = {"train": "training data (mean over the epoch's minibatches)",
                "val": "validation data (end of epoch)"}


def log_spaced_label(split: str, size: int | None) -> str:
    """The legend of the bound measured at log-spaced counts on ``split``'s ``size`` points (a
    resumed run's curve before its first point, of an older checkpoint, has no size)."""
    points = "" if size is None else f", {size:,} points"
    return f"{split} data{points}, at log-spaced counts (curve.json)"


def log_spaced(trainer: L.Trainer) -> dict[str, list[tuple[int, float]]]:
    """The bound at log-spaced samples seen that the run's ``BoundCurve`` measured, by its legend
    label: drawn beside the epochs' curves, which of a run shorter than an epoch were one point
    each (the Figure 2 curve of a short run was two dots)."""
    from vae_lightning.callbacks.curve import BoundCurve

    curve = next((c for c in trainer.callbacks if isinstance(c, BoundCurve)), None)
    if curve is None:
        return {}
    found = {}
    for split in curve.splits:
        points = [(int(p["samples_seen"]), float(p[f"{split}/elbo"])) for p in curve.points
                  if p.get(f"{split}/elbo") is not None]
        found[log_spaced_label(SPLIT_NAMES.get(split, "training"), curve.sizes.get(split))] = points
    return found


def log_ticks(ax: Any) -> None:
    """Label a log x-axis densely enough to read on any span, its labels apart: 1-2-3-4-5-7 in
    each decade up to one decade, 1-2-5 up to 2.5, 1-3 up to 5, decades beyond; in engineering
    notation (500, 2k, 1M)."""
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    low, high = ax.get_xlim()
    decades = math.log10(high / low)
    subs = ((1.0, 2.0, 3.0, 4.0, 5.0, 7.0) if decades <= 1 else (1.0, 2.0, 5.0) if decades <= 2.5
            else (1.0, 3.0) if decades <= 5 else (1.0,))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def curves_figure(curves: dict[str, list[tuple[int, float]]],
                  spaced: dict[str, list[tuple[int, float]]] | None = None):
    """Fig. 2's axes: the bound (nats per data point) against training samples seen, log x: the
    epochs' ``curves`` and, dashed, the log-spaced ones (``log_spaced``), each by its label. A
    curve with no points (no validation split) is left out."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = {CURVE_LABELS.get(name, name): points for name, points in curves.items() if points}
    dashed = {name: points for name, points in (spaced or {}).items() if points}
    for name, points in [*drawn.items(), *dashed.items()]:
        seen, bound = zip(*points)
        ax.plot(seen, bound, marker=".", linestyle="--" if name in dashed else "-", label=name)
    drawn = {**drawn, **dashed}
    ax.set_xscale("log")
    if drawn:
        log_ticks(ax)
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no training epoch has ended yet", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("lower bound on log p(x) (nats per data point)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


# How the figures name the splits.
SPLIT_NAMES = {"val": "validation", "test": "test"}


class Figures(L.Callback):
    """Draw the figures at the end of fit, and every ``every_n_epochs`` epochs when > 0.

    PNGs go to ``dirpath`` (default ``<trainer.default_root_dir>/figures``): ``<name>.png`` at the
    end of fit, ``<name>-epoch<NNN>.png`` in between. Each is also logged to W&B
    (``log_image``), TensorBoard (``add_figure``) and MLflow (an artifact under ``figures/``) when
    those loggers are active; other loggers get the files only. The latent scatter shows
    ``n_points`` validation points (test points without a validation split), the reconstructions
    40 of them, each spread evenly over what it draws from (``n_points=0``: neither is drawn);
    its classes are named by the data module's ``classes`` (the name of each label) when it has
    them.

    With ``traversals``, ``traversals.png``: the ``traversal_dims`` latent dimensions ranked
    highest by KL over those points (None: all), each set to ``traversal_steps`` values on
    [-``traversal_span``, ``traversal_span``] (``traversal``); with ``traversal_gif`` also
    ``traversals.gif``, animating them for ``traversal_bases`` points (a file only).
    """

    @checked
    def __init__(self, dirpath: str | None = None, every_n_epochs: NonNegativeInt = 0,
                 grid: PositiveInt = 20, n_samples: PositiveInt = 100,
                 n_points: NonNegativeInt = 1000, traversals: bool = False,
                 traversal_steps: PositiveInt = 10, traversal_span: Span = 2.5,
                 traversal_dims: PositiveInt | None = None, traversal_gif: bool = False,
                 traversal_bases: PositiveInt = 8) -> None:
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.grid, self.n_samples, self.n_points = grid, n_samples, n_points
        self.traversals, self.traversal_steps = traversals, traversal_steps
        self.traversal_span, self.traversal_dims = traversal_span, traversal_dims
        self.traversal_gif, self.traversal_bases = traversal_gif, traversal_bases
        self.curves: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse traversals of a latent space confined to a part of R^latent, before training;
        say that images of channels no picture shows will have none."""
        if self.traversals and (confined := confined_space(pl_module.prior)):
            raise ConfigError(refusal("callbacks.figures.traversals=true", confined))
        shape = pl_module.data_shape
        if (stage == "fit" and getattr(trainer.datamodule, "images", True)
                and not drawable(shape)):
            log.warning("Figures: %s (samples, manifold, reconstructions, traversals); the "
                        "curves and the latent scatter are.", not_drawn(shape))

    def _record(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        value = trainer.callback_metrics.get(f"{stage}/elbo")
        if value is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.curves[stage].append((int(module.samples_seen), float(value)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, "val")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, "train")
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0:
            self.draw(trainer, pl_module, suffix=f"-epoch{epoch:03d}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"curves": self.curves}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = state_dict["curves"]

    def _validation_points(self, trainer: L.Trainer, device: torch.device, split: str):
        """``n_points`` points of ``split`` spread evenly over it, as the model takes them: not
        its first ones, which for data of one's own held out in the file's order (a folder's
        images sorted by class) were of the first classes only."""
        dm = trainer.datamodule
        x, y = dm.splits[split]
        pick = spread(len(x), self.n_points).to(x.device)
        return dm.to_inputs((x[pick].to(device), y[pick].to(device)))

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str = "") -> None:
        """Draw every figure that applies, save it and log it (global rank 0 only); none from
        weights that are not all finite (a run whose update diverged while its loss was still
        finite: its decoder's images are NaN, and the run ends as diverged, exit code 4)."""
        if not trainer.is_global_zero:
            return
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            log.warning("Figures%s not drawn: the model's weights are not all finite.", suffix)
            return
        dm = trainer.datamodule
        training = pl_module.training
        pl_module.eval()
        # Data that are not images (feature vectors, data=array [N, D]) have no pictures of
        # their points: their samples, manifold, reconstructions and traversals are left out.
        images = getattr(dm, "images", True)  # a data module of the user's own: images
        images = images and drawable(pl_module.data_shape)  # 2 channels: no pictures
        figures = {"curves": lambda: curves_figure(self.curves, log_spaced(trainer))}
        conditions = data_conditions(dm, pl_module)
        if images:
            figures["samples"] = lambda: samples_figure(pl_module, self.n_samples, conditions)
        # A 2-d latent space the decoder reads whole: stochastic layers of 1 + 1 units have one
        # (the decoder reads z_1 alone), and a grid over z_2 would decode the same images. And
        # all of R^2, or the circle: a grid over the plane of a space confined to one-hot codes
        # or a codebook (model=gumbel with one block of 2, a VQ-VAE) drew the decoder at points
        # it never reads, titled as the model's learned manifold.
        if pl_module.latent == 2 == getattr(pl_module.decoder, "latent", 2) and images \
                and confined_space(pl_module.prior, kept=frozenset({"sphere"})) is None:
            on_circle = "sphere" in getattr(pl_module.prior, "features", ())  # parts.FEATURES
            figures["manifold"] = lambda: (circle_figure if on_circle
                                           else manifold_figure)(pl_module, self.grid,
                                                                 conditions)
        splits = getattr(dm, "splits", {})
        # The validation points; the test points when there is no validation split (val_size=0).
        split = next((s for s in ("val", "test") if s in splits and len(splits[s][0])), None)
        traversed: list[Traversal] = []  # kept for the GIF
        if split is not None and self.n_points > 0:
            x, y = self._validation_points(trainer, pl_module.device, split)
            if images:
                some = spread(len(x), 40).to(x.device)
                figures["reconstructions"] = lambda: reconstructions_figure(pl_module, x[some],
                                                                            y=y[some])
            classes = getattr(dm, "classes", None)
            figures["latents"] = lambda: latents_figure(pl_module, x, y, classes,
                                                        SPLIT_NAMES[split])
            if self.traversals and images:
                def traversals():
                    traversed.append(traversal(pl_module, x, self.traversal_bases,
                                               self.traversal_steps, self.traversal_span,
                                               self.traversal_dims, y))
                    return traversal_figure(traversed[0])

                figures["traversals"] = traversals
        out = Path(self.dirpath or rundir.path(trainer.default_root_dir, "figures"))
        out.mkdir(parents=True, exist_ok=True)
        # The same prior draws every time, and the training's random stream left untouched.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            for name, make in figures.items():
                fig = make()
                path = out / f"{name}{suffix}.png"
                fig.savefig(path, dpi=100)
                log_figure(trainer, f"figures/{name}", fig, path)
                pyplot().close(fig)
        if traversed and self.traversal_gif:
            traversal_gif(traversed[0], out / f"traversals{suffix}.gif")
        pl_module.train(training)


def log_figure(trainer: L.Trainer, key: str, fig: Any, path: Path) -> None:
    """Send a saved figure to each active logger that takes images: W&B and TensorBoard under
    ``key`` at the current step, MLflow as the artifact ``figures/<file name>``."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, fig, trainer.global_step, close=False)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path), key.rpartition("/")[0])
