"""The paper's figures, as PNG files in ``<run dir>/figures/`` and in the active loggers.

- ``manifold.png`` (Fig. 4, only when the latent space is 2-d): a grid of unit-square points mapped
  through the inverse Gaussian CDF to z, each decoded to its mean image;
- ``samples.png`` (Fig. 5): mean images of random draws from the prior;
- ``reconstructions.png``: validation inputs (odd rows) above their reconstructions (even rows),
  decoded from the posterior mean;
- ``latents.png``: posterior means of validation points, coloured by label (2-d directly, more
  dimensions projected on their first two principal components; Frey Face has no labels and is
  coloured by frame order);
- ``curves.png`` (Fig. 2's axes): the bound on the training and validation data against the
  number of training samples seen, log x-axis.

Images are drawn in grayscale or, with three channels, in colour.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torch.distributions import Normal

from vae_lightning import rundir
from vae_lightning.args import NonNegativeInt, PositiveInt, checked
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


@torch.no_grad()
def decode_mean(model: L.LightningModule, z: Tensor) -> Tensor:
    """The mean image E[x|z] of the decoder at each z ``[..., latent]``: ``[..., C, H, W]``."""
    return model.decode(z).mean.cpu()


def tile(images: Tensor) -> Tensor:
    """Arrange ``[rows, cols, C, H, W]`` images into one ``[rows * H, cols * W, C]`` picture."""
    rows, cols, c, h, w = images.shape
    return images.permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)


def image_figure(picture: Tensor, title: str):
    plt = pyplot()
    height, width, channels = picture.shape
    scale = 8.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(4.5, scale * width), max(3.0, scale * height + 0.5)))
    image = picture.clamp(0, 1).numpy()
    if channels == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    return fig


def manifold_figure(model: L.LightningModule, n: int = 20):
    """Fig. 4: the decoded n x n inverse-CDF grid (see ``manifold_grid`` for the order)."""
    picture = tile(decode_mean(model, manifold_grid(n)))
    return image_figure(picture, f"Learned 2-d manifold ({n}x{n} grid, z = inverse CDF)")


def samples_figure(model: L.LightningModule, n: int = 100):
    """Fig. 5: mean images of ``n`` draws from the prior, on a square-ish grid."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    images = model.sample(rows * cols).cpu()
    title = f"Random samples from the prior (Nz = {model.latent})"
    return image_figure(tile(images.reshape(rows, cols, *images.shape[1:])), title)


@torch.no_grad()
def reconstructions_figure(model: L.LightningModule, x: Tensor, per_row: int = 10):
    """Inputs ``x`` ``[B, C, H, W]`` (odd rows) above their reconstructions
    E[x | z = E_q[z|x]]."""
    per_row = min(per_row, len(x))
    rows = max(1, len(x) // per_row)
    x = x[: rows * per_row]
    recon = model.reconstruct(x).cpu()
    pairs = torch.stack([x.cpu().reshape(rows, per_row, *x.shape[1:]),
                         recon.reshape(rows, per_row, *x.shape[1:])], 1)
    picture = tile(pairs.reshape(2 * rows, per_row, *x.shape[1:]))
    return image_figure(picture, "Inputs (odd rows), reconstructions (even rows)")


def project_2d(z: Tensor) -> tuple[Tensor, str]:
    """``z`` itself when it is 2-d, else its projection on the first two principal components."""
    if z.shape[1] == 2:
        return z, "z"
    if z.shape[1] == 1:
        return torch.cat([z, torch.zeros_like(z)], 1), "z"
    centred = z - z.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T, "PC"


@torch.no_grad()
def latents_figure(model: L.LightningModule, x: Tensor, labels: Tensor):
    """Posterior means of ``x``, coloured by label (by position in the split when labels are -1)."""
    plt = pyplot()
    z = model.encode(x).mean.cpu()
    points, axis = project_2d(z)
    unlabelled = bool((labels < 0).all())
    colour = torch.arange(len(x)) if unlabelled else labels.cpu()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = "viridis" if unlabelled else "tab10"
    dots = ax.scatter(points[:, 0], points[:, 1], c=colour.numpy(), cmap=cmap, s=6, alpha=0.8)
    fig.colorbar(dots, ax=ax, label="frame order" if unlabelled else "label")
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    how = "" if z.shape[1] <= 2 else f" ({z.shape[1]}-d, first two principal components)"
    ax.set_title(f"Posterior means of validation data{how}")
    fig.tight_layout()
    return fig


def curves_figure(curves: dict[str, list[tuple[int, float]]]):
    """Fig. 2's axes: the bound (nats per data point) against training samples seen, log x."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, points in curves.items():
        if points:
            seen, bound = zip(*points)
            ax.plot(seen, bound, marker=".", label=name)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # labelled decades only: no overlaps
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel("lower bound on log p(x) (nats per data point)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


class Figures(L.Callback):
    """Draw the figures at the end of fit, and every ``every_n_epochs`` epochs when > 0.

    PNGs go to ``dirpath`` (default ``<trainer.default_root_dir>/figures``): ``<name>.png`` at the
    end of fit, ``<name>-epoch<NNN>.png`` in between. Each is also logged to W&B
    (``log_image``) and TensorBoard (``add_figure``) when those loggers are active; other loggers
    get the files only. The latent scatter shows the first ``n_points`` validation points, the
    reconstructions the first 40 (``n_points=0``: neither is drawn).
    """

    @checked
    def __init__(self, dirpath: str | None = None, every_n_epochs: NonNegativeInt = 0,
                 grid: PositiveInt = 20, n_samples: PositiveInt = 100,
                 n_points: NonNegativeInt = 1000) -> None:
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.grid, self.n_samples, self.n_points = grid, n_samples, n_points
        self.curves: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}

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
        dm = trainer.datamodule
        xs, ys, n = [], [], 0
        for x, y in (dm.val_dataloader() if split == "val" else dm.test_dataloader()):
            x, y = dm.to_inputs((x.to(device), y))
            xs.append(x)
            ys.append(y)
            n += len(x)
            if n >= self.n_points:
                break
        return torch.cat(xs)[: self.n_points], torch.cat(ys)[: self.n_points]

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str = "") -> None:
        """Draw every figure that applies, save it and log it (global rank 0 only)."""
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        training = pl_module.training
        pl_module.eval()
        figures = {"samples": lambda: samples_figure(pl_module, self.n_samples),
                   "curves": lambda: curves_figure(self.curves)}
        if pl_module.latent == 2:
            figures["manifold"] = lambda: manifold_figure(pl_module, self.grid)
        splits = getattr(dm, "splits", {})
        # The validation points; the test points when there is no validation split (val_size=0).
        split = next((s for s in ("val", "test") if s in splits and len(splits[s][0])), None)
        if split is not None and self.n_points > 0:
            x, y = self._validation_points(trainer, pl_module.device, split)
            figures["reconstructions"] = lambda: reconstructions_figure(pl_module, x[:40])
            figures["latents"] = lambda: latents_figure(pl_module, x, y)
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
        pl_module.train(training)


def log_figure(trainer: L.Trainer, key: str, fig: Any, path: Path) -> None:
    """Send a saved figure to each active logger that takes images (W&B, TensorBoard)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, fig, trainer.global_step, close=False)
