"""Convolutional networks whose latent side is a map, as the VQ-VAE's (van den Oord et al. 2017,
Sec. 4.1: strided convolutions, residual blocks, a D-channel map of code vectors): the encoder
ends in a 1 x 1 convolution to a D x h x w map and the decoder starts from one, where
``conv_nets.ConvEncoder`` / ``ConvDecoder`` pass through an affine layer that forgets where things
are. The map is flattened channel-major ([D, h, w] -> D h w), the layout ``posteriors.vq`` reads
and a prior over code maps (``pixelcnn``) models; h = H / 2^depth and w = W / 2^depth, and the
latent size must be D h w for a whole number D."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vae_lightning.args import NonNegativeInt, PositiveInt, checked, fail
from vae_lightning.conv_nets import _Batched, _depth, _down, _image, _residual_stage, _up
from vae_lightning.nets import ACTIVATIONS, Activation, _size


def _map_channels(owner: object, size: int, h: int, w: int) -> int:
    """D, the channels of an h x w map of ``size`` units (refused when h w does not divide)."""
    if size % (h * w):
        fail(owner, "latent", size, f"a multiple of the {h} x {w} map's {h * w} positions "
             "(model.latent = code_dim x positions)")
    return size // (h * w)


class ConvMapEncoder(_Batched):
    """An image ``in_shape = (C, H, W)`` to a map: ``len(channels)`` strided convolutions
    (kernel 4, stride 2, padding 1; ``activation`` after each), ``blocks`` residual blocks
    (``conv_nets.ResidualBlock``) at the last, ``activation`` and a 1 x 1 convolution to the
    prod(out_shape) / (h w) channels of the h x w map (linear output)."""

    @checked
    def __init__(self, in_shape: Sequence[PositiveInt], out_shape: Sequence[PositiveInt],
                 channels: Sequence[PositiveInt] = (32, 64), blocks: NonNegativeInt = 1,
                 activation: Activation = "relu") -> None:
        c, h, w = _image(self, "in_shape", in_shape)
        channels = list(channels)
        depth = _depth(self, channels, h, w)
        d = _map_channels(self, _size(out_shape), h >> depth, w >> depth)
        layers: list[nn.Module] = []
        for n_in, n_out in zip([c, *channels[:-1]], channels):
            layers += [_down(n_in, n_out), ACTIVATIONS[activation]()]
        layers += _residual_stage(channels[-1], blocks, 1, activation) if blocks else []
        super().__init__(*layers, ACTIVATIONS[activation](), nn.Conv2d(channels[-1], d, 1),
                         nn.Flatten())
        self._shapes(in_shape, (c, h, w), out_shape)


class ConvMapDecoder(_Batched):
    """The mirror of ``ConvMapEncoder`` with the same ``channels`` (from the image side): the
    input seen as its D x h x w map, a 3 x 3 convolution to ``channels[-1]``, ``blocks``
    residual blocks, then transposed convolutions (kernel 4, stride 2, padding 1; ``activation``
    before each) doubling H and W to the ``C'`` channels of ``out_shape = (C', H, W)`` that the
    likelihood needs (linear output)."""

    @checked
    def __init__(self, in_shape: Sequence[PositiveInt], out_shape: Sequence[PositiveInt],
                 channels: Sequence[PositiveInt] = (32, 64), blocks: NonNegativeInt = 1,
                 activation: Activation = "relu") -> None:
        c, h, w = _image(self, "out_shape", out_shape)
        channels = list(channels)
        depth = _depth(self, channels, h, w)
        size = (_map_channels(self, _size(in_shape), h >> depth, w >> depth), h >> depth,
                w >> depth)
        layers: list[nn.Module] = [nn.Conv2d(size[0], channels[-1], 3, padding=1)]
        layers += _residual_stage(channels[-1], blocks, 1, activation) if blocks else []
        for n_in, n_out in zip(channels[::-1], [*channels[-2::-1], c]):
            layers += [ACTIVATIONS[activation](), _up(n_in, n_out)]
        super().__init__(*layers)
        self._shapes(in_shape, size, out_shape)
