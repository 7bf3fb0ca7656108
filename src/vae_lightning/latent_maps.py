"""Residual cells between the latent maps of a convolutional hierarchy (NVAE, Vahdat & Kautz 2020;
Very Deep VAEs, Child 2021, at a small scale): each stochastic layer z_l is a map of
``channels_l x s_l x s_l`` latent units, stored flat in the latent vector, and the conditionals
p(z_l | z_{l+1}) (``priors.hierarchy.TopDown``) and q(z_l | z_{l-1})
(``posteriors.hierarchy.BottomUp``) are computed by a ``LatentMap`` between the two maps, so the
top layers are coarse and the bottom ones fine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn
from torch.nn import functional as F

from vae_lightning.args import PositiveInt, checked, fail
from vae_lightning.conv_nets import _residual_stage
from vae_lightning.nets import ACTIVATIONS, Activation, _size


class LatentMap(nn.Module):
    """A flat block of ``in_channels`` x s x s latent units, seen as a map, to the flat
    parameters of the next layer's family, seen as a map of s·``scale`` x s·``scale`` (the
    channels are what ``out_shape`` leaves: the family's parameters per unit, e.g. a Gaussian's
    mean and log-variance, times that layer's channels): a 3x3 convolution to ``channels``,
    ``blocks`` pre-activation residual blocks (``conv_nets.ResidualBlock``), the resize (nearest
    upsampling for ``scale`` = 2, average pooling for 0.5), ``blocks`` more, ``activation`` and a
    3x3 convolution to the output channels (linear). No normalisation, as ``nets``."""

    @checked
    def __init__(
        self,
        in_shape: Sequence[PositiveInt],
        out_shape: Sequence[PositiveInt],
        in_channels: PositiveInt,
        scale: Literal[0.5, 1, 2] = 2,
        channels: PositiveInt = 32,
        blocks: PositiveInt = 1,
        activation: Activation = "elu",
    ) -> None:
        super().__init__()
        size_in, size_out = _size(in_shape), _size(out_shape)
        side = math.isqrt(size_in // in_channels)
        if in_channels * side * side != size_in:
            fail(self, "in_channels", in_channels, f"a number of channels c such that the "
                 f"layer's {size_in} units are a c x s x s map")
        out_side = int(side * scale)
        if out_side < 1 or out_side != side * scale or size_out % (out_side * out_side):
            fail(self, "scale", scale, f"a resize of the {side} x {side} map to a side whose "
                 f"square divides the next layer's {size_out} parameters")
        self.in_map = (in_channels, side, side)
        self.out_map = (size_out // (out_side * out_side), out_side, out_side)
        self.scale, self.out_shape = scale, tuple(out_shape)
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.before = nn.Sequential(*_residual_stage(channels, blocks, 2, activation))
        self.after = nn.Sequential(*_residual_stage(channels, blocks, 2, activation))
        self.head = nn.Sequential(ACTIVATIONS[activation](),
                                  nn.Conv2d(channels, self.out_map[0], 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        batch = z.shape[:-1]
        h = self.before(self.stem(z.reshape(-1, *self.in_map)))
        if self.scale == 2:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        elif self.scale == 0.5:
            h = F.avg_pool2d(h, 2)
        return self.head(self.after(h)).reshape(*batch, *self.out_shape)
