"""Latent traversals (``traversals.png`` and ``traversals.gif``): E[x|z] with one latent dimension
of z swept over evenly spaced values, the others kept, a row per dimension ranked by its mean
KL(q(z_j|x) || p(z_j)) (the variance of the posterior's location where q and p do not factorize).
They show what each latent unit encodes, as in the disentanglement papers (beta-VAE, Higgins et
al. 2017); drawn by the ``Figures`` callback and by ``vae-sample``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, NamedTuple

import lightning as L
import torch
from torch import Tensor

from vae_lightning.args import Range
from vae_lightning.callbacks.images import decode_mean, image_figure, tick_label, tile
from vae_lightning.objectives.free_bits import per_dimension_kl
from vae_lightning.plotting import pyplot

KL_SAMPLES = 16  # draws of z per point for a per-dimension KL without a closed form
# A traversal's values are float32 latent points on [-span, span]: a span beyond float32's range
# (1e300) was a RuntimeError traceback from torch.linspace (vae-sample's traverse_span, the
# figures callback's traversal_span).
Span = Annotated[float, Range(gt=0, le=1e38)]


class Ranking(NamedTuple):
    """Latent dimensions in rank order, the score of each (in that order), and what it is."""

    dims: list[int]
    scores: list[float] | None
    what: str


@torch.no_grad()
def latent_ranking(model: L.LightningModule, x: Tensor | None,
                   y: Tensor | None = None) -> Ranking:
    """The latent dimensions ranked by their mean KL(q(z_j|x) || p(z_j)) over ``x``, largest
    first, when q and p are products over the dimensions (analytic where torch.distributions
    has the pair, else Monte Carlo); else by the variance over ``x`` of the posterior's location
    (the active-units statistic); without ``x``, in index order. ``y``: the labels of ``x``, for
    a conditional model."""
    if x is None:
        return Ranking(list(range(model.latent)), None, "in index order (no data to rank by)")
    y = model.labels(y, len(x), "latent_ranking")
    q = model.encode(x, y)
    factorized = ("factorized" in model.encoder.posterior.features
                  and "factorized" in getattr(model.prior, "features", ()))
    if factorized:
        with model.given(y):
            p = model.prior.distribution()
        kl = per_dimension_kl(q, p, q.sample((KL_SAMPLES,)), "auto")
        score, what = kl.mean(0).cpu(), "ranked by mean KL(q(z_j|x) || p(z_j)), nats"
    else:
        score, what = model.encoder.location(q).var(0).cpu(), "ranked by the variance of E_q[z_j]"
    order = score.argsort(descending=True)
    return Ranking(order.tolist(), score[order].tolist(), what)


def refusal(option: str, confined: str) -> str:
    """Why ``option`` (traversals asked for) cannot be drawn in a latent space ``confined`` to a
    part of R^latent (``parts.confined_space``): a coordinate swept along a line leaves it."""
    return (f"{option}: a traversal sets one latent coordinate to values along a line, but the "
            f"model's latent space is {confined}, which the line leaves: its images would be "
            "decoded from z the decoder was never trained on; leave traversals off.")


class Traversal(NamedTuple):
    """Decoded traversals: ``images`` ``[bases, dims, steps, C, H, W]``, the value of each
    step, the ranking of the dimensions (in the images' order), and what the base points are."""

    images: Tensor
    values: Tensor
    ranking: Ranking
    base: str


@torch.no_grad()
def traversal(model: L.LightningModule, x: Tensor | None = None, bases: int = 8,
              steps: int = 10, span: float = 2.5, dims: int | None = None,
              y: Tensor | None = None) -> Traversal:
    """For each of ``bases`` base points (the posterior locations of the first points of ``x``;
    without ``x``, draws from the prior) and each of the ``dims`` highest-ranked latent
    dimensions (``latent_ranking``; None: all) that the decoder reads (a hierarchy's: z_1's),
    E[x|z] with that dimension of z set to each of ``steps`` values evenly spaced on
    [-span, span], the others kept. A conditional model's
    base points keep their labels ``y`` (those of ``x``; for prior draws, the classes in
    turn)."""
    y = None if y is None else model.labels_of_data(y)
    ranking = latent_ranking(model, x, y)
    # Stochastic layers: the decoder reads z_1 alone, its first units; a unit of a higher layer
    # set with z_1 kept decodes to the same image at every value (a row that shows nothing).
    read = getattr(model.decoder, "latent", model.latent)
    kept = [row for row, dim in enumerate(ranking.dims) if dim < read][:dims]
    what = ranking.what + (f" (z_1's {read} units, which the decoder reads)"
                           if read < model.latent else "")
    ranking = Ranking([ranking.dims[row] for row in kept],
                      ranking.scores and [ranking.scores[row] for row in kept], what)
    if x is not None:
        labels = model.labels(None if y is None else y[:bases], len(x[:bases]), "traversal")
        base = model.encoder.location(model.encode(x[:bases], labels))
    else:
        labels = model.labels(None, bases)
        with model.given(labels):
            base = model.prior.sample(bases)
    values = torch.linspace(-span, span, steps, device=base.device)
    z = base[:, None, None, :].repeat(1, len(ranking.dims), steps, 1)
    for row, dim in enumerate(ranking.dims):
        z[:, row, :, dim] = values
    what = "a data point's posterior location" if x is not None else "a draw from the prior"
    # One batch of points, each with its base's label.
    # (dim 0: a condition vector [bases, K] per row, not its numbers one by one)
    each = None if labels is None else labels.repeat_interleave(z[0].numel() // model.latent,
                                                                dim=0)
    images = decode_mean(model, z.reshape(-1, model.latent), each)
    return Traversal(images.reshape(*z.shape[:-1], *images.shape[1:]), values.cpu(), ranking,
                     what)


def traversal_figure(found: Traversal):
    """The traversals of the first base point: a row per latent dimension in rank order,
    labelled with its index and score, a column per value."""
    images = found.images[0]
    rows, steps, _, height, width = images.shape
    fig = image_figure(tile(images), f"Latent traversals of {found.base}: E[x|z], $z_j$ set to "
                                     "each value")
    ax = fig.axes[0]
    ax.axis("on")
    scores = found.ranking.scores
    labels = [f"$z_{{{dim}}}$" + (f" ({scores[row]:.2f})" if scores else "")
              for row, dim in enumerate(found.ranking.dims)]
    ax.set_yticks([(row + 0.5) * height - 0.5 for row in range(rows)], labels)
    ax.set_xticks([(j + 0.5) * width - 0.5 for j in range(steps)],
                  [tick_label(v) for v in found.values])
    ax.tick_params(labelsize=7, length=0)
    ax.set_xlabel("value of $z_j$")
    ax.set_ylabel(f"$z_j$, {found.ranking.what}")
    fig.tight_layout()
    return fig


def traversal_gif(found: Traversal, path: Path, frame_ms: int = 120) -> Path:
    """The traversals as an animated GIF at ``path``: each frame a grid of a row per base point
    and a column per dimension (in rank order) at one value, the values going out and back;
    pixels enlarged to at least 64 per image side."""
    from PIL import Image

    pictures = [tile(found.images[:, :, step]) for step in range(found.images.shape[2])]
    pictures += pictures[-2:0:-1]  # and back
    zoom = max(1, math.ceil(64 / found.images.shape[-2]))
    frames = []
    for picture in pictures:
        array = (picture.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        frames.append(image.resize((image.width * zoom, image.height * zoom), Image.NEAREST))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return path


def write_traversals(model: L.LightningModule, out: Path, x: Tensor | None = None,
                     bases: int = 8, steps: int = 10, span: float = 2.5,
                     dims: int | None = None, gif: bool = True,
                     y: Tensor | None = None) -> list[Path]:
    """``traversals.png`` (and ``traversals.gif`` with ``gif``) in ``out``: see ``traversal``
    for ``x`` (None: base points drawn from the prior, dimensions in index order), ``bases``,
    ``steps``, ``span``, ``dims`` and ``y``. Returns the paths written."""
    model.eval()
    found = traversal(model, x, bases, steps, span, dims, y)
    fig = traversal_figure(found)
    paths = [out / "traversals.png"]
    fig.savefig(paths[0], dpi=100)
    pyplot().close(fig)
    if gif:
        paths.append(traversal_gif(found, out / "traversals.gif"))
    return paths
