"""The picture primitives every figure of decoded images shares: the decoder's mean image at
given z, a grid of images tiled into one picture, that picture as a titled figure (grayscale, or
colour with three channels), and axis labels in matplotlib's own style. Kept apart so the
callback's figures, the traversals and ``vae-sample`` draw images one way.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor

from vae_lightning.plotting import pyplot

# The channels a picture of images shows: grey (1) or colour (3). Images of other channel counts
# (data=array [N, 2, H, W], say) are trained on, but not drawn.
PICTURE_CHANNELS = (1, 3)


def drawable(shape: Sequence[int] | None) -> bool:
    """Whether images of ``shape`` ``[C, H, W]`` can be drawn (``PICTURE_CHANNELS``); a model
    that does not know its data's shape (built in Python without it) is drawn as before."""
    return not shape or len(shape) != 3 or shape[0] in PICTURE_CHANNELS


def not_drawn(shape: Sequence[int]) -> str:
    """Why images of ``shape`` have no pictures, in words."""
    return (f"the images have {shape[0]} channels, and a picture shows 1 (grey) or 3 (colour): "
            "none is drawn")


@torch.no_grad()
def decode_mean(model: L.LightningModule, z: Tensor, y: Tensor | int | None = None) -> Tensor:
    """The mean image E[x|z] of the decoder at each z ``[..., B, latent]``: ``[..., B, C, H, W]``
    (given the labels ``y`` of the B points, for a conditional model)."""
    return model.decode(z, y).mean.cpu()


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



def tick_label(value: float) -> str:
    """Two decimals, with the typographic minus matplotlib's own tick labels use."""
    return f"{value:.2f}".replace("-", "\N{MINUS SIGN}")
