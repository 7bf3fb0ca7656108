"""The scatter of the latent space (``latents.png``): posterior means of data points, projected
on their first two principal components beyond two dimensions, one colour per class named as the
data module names its classes; unlabelled data coloured by position in the split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from vae_lightning.plotting import pyplot


def project_2d(z: Tensor) -> tuple[Tensor, str]:
    """``z`` itself when it is 2-d, else its projection on the first two principal components
    (a second axis of zeros where there is one dimension, or one point: its single component)."""
    if z.shape[1] == 2:
        return z, "z"
    if z.shape[1] == 1:
        return torch.cat([z, torch.zeros_like(z)], 1), "z"
    centred = z - z.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ v[:2].T
    return torch.cat([points, points.new_zeros(len(z), 2 - points.shape[1])], 1), "PC"


def class_colours(n: int) -> np.ndarray:
    """``n`` distinct RGBA colours, one per class: matplotlib's qualitative tab10 / tab20 palettes
    up to 20 classes, else evenly spaced along the turbo map."""
    plt = pyplot()
    if n <= 20:
        return np.asarray(plt.get_cmap("tab10" if n <= 10 else "tab20").colors[:n])
    return plt.get_cmap("turbo")(np.linspace(0, 1, n))


def class_names(labels: Tensor, classes: Sequence[str] | None) -> list[str]:
    """The name of each class 0..K-1: ``classes`` when it names every label, else the numbers."""
    count = int(labels.max()) + 1
    if classes and len(classes) >= count:
        return [str(name) for name in classes]
    return [str(k) for k in range(count)]


def _scatter_classes(fig: Any, ax: Any, points: Tensor, labels: Tensor,
                     classes: Sequence[str] | None) -> None:
    """One colour per class, and a colour bar with one block per class, labelled with its name
    (at most about 30 names, evenly spread, when there are more classes)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    names = class_names(labels, classes)
    n = len(names)
    norm = BoundaryNorm(np.arange(n + 1) - 0.5, n)  # class k: the block [k - 1/2, k + 1/2)
    dots = ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), s=6, alpha=0.8,
                      cmap=ListedColormap(class_colours(n)), norm=norm)
    shown = range(0, n, math.ceil(n / 30))
    bar = fig.colorbar(dots, ax=ax, ticks=list(shown), label="class")
    bar.set_ticklabels([names[k] for k in shown])
    bar.ax.tick_params(length=0, labelsize=8 if n > 10 else 10)


@torch.no_grad()
def latents_figure(model: L.LightningModule, x: Tensor, labels: Tensor,
                   classes: Sequence[str] | None = None, split: str = "validation"):
    """Posterior means of ``x`` (points of the ``split`` split), one colour per class, named by
    ``classes`` (the name of each label) when given; by position in the split when the data
    have no labels (-1) or serve condition vectors instead."""
    plt = pyplot()
    z = model.encoder.location(model.encode(x, model.labels_of_data(labels))).cpu()
    points, axis = project_2d(z)
    labels = labels.cpu()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    if labels.is_floating_point() or bool((labels < 0).all()):  # condition vectors, or none
        dots = ax.scatter(points[:, 0], points[:, 1], c=np.arange(len(x)), cmap="viridis", s=6,
                          alpha=0.8)
        fig.colorbar(dots, ax=ax, label=f"position in the {split} split (data order)")
    else:
        _scatter_classes(fig, ax, points, labels, classes)
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    # On a line of its own: beside the colour bar one line was cut at the figure's left edge.
    how = "" if z.shape[1] <= 2 else f"\n({z.shape[1]}-d, first two principal components)"
    ax.set_title(f"Posterior means of {split} data{how}")
    fig.tight_layout()
    return fig
