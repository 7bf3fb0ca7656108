"""Convolutional and residual networks for images, the options of ``model/encoder`` and
``model/decoder`` beside the MLP (``nets``, which states the shapes a network maps between):
strided convolutions (``ConvEncoder`` / ``ConvDecoder``, optionally with fully connected layers
on the latent side) and pre-activation residual networks (``ResNetEncoder`` / ``ResNetDecoder``),
each halving (or doubling) H and W ``len(channels)`` times, with the helpers ``conv_maps`` and
``latent_maps`` share. No normalisation over the batch, for the reasons ``nets`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vae_lightning.args import PositiveFloat, PositiveInt, checked, fail
from vae_lightning.nets import ACTIVATIONS, Activation, Init, _size, initialise


class _Batched(nn.Sequential):
    """A sequence of layers on one batch dimension, run on inputs with any leading dimensions:
    ``[..., *in_shape]`` is flattened to ``[N, *layer_input]``, and the layers' ``[N, ...]`` is
    reshaped to ``[..., *out_shape]``."""

    def _shapes(self, in_shape: Sequence[int], layer_input: Sequence[int],
                out_shape: Sequence[int]) -> None:
        self.in_dims, self.layer_input = len(in_shape), tuple(layer_input)
        self.out_shape = tuple(out_shape)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[:x.dim() - self.in_dims]
        y = super().forward(x.reshape(_size(batch), *self.layer_input))
        return y.reshape(*batch, *self.out_shape)


def _image(owner: object, name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)``, or the ``ArgumentError`` of a shape that is no image."""
    if len(shape) != 3:
        fail(owner, name, tuple(shape), "expected an image shape [C, H, W]")
    c, h, w = shape
    return c, h, w


def _levels(owner: object, channels: Sequence[int]) -> int:
    """``len(channels)``, the number of strided levels, refused when there is none."""
    if not channels:
        fail(owner, "channels", list(channels), "expected at least one size")
    return len(channels)


def _depth(owner: object, channels: Sequence[int], h: int, w: int,
           odd_kernel: bool = False) -> int:
    """The number of halvings, ``len(channels)``, once 2^depth is known to divide H and W;
    ``odd_kernel``: the network also takes an odd ``kernel``, which fits any H and W (the
    refusal says so)."""
    depth = _levels(owner, channels)
    if h % 2**depth or w % 2**depth:
        fits = min((h & -h).bit_length(), (w & -w).bit_length()) - 1  # halvings H and W allow
        odd = "an odd kernel (kernel=5 fits any H and W, ceil(H / 2) per level)"
        if fits:
            hint = f"at most {fits} entr{'y fits' if fits == 1 else 'ies fit'}"
            hint += f", or use {odd}" if odd_kernel else ""
        elif odd_kernel:
            hint = f"H or W is odd, which kernel 4 cannot halve: use {odd}"
        else:
            hint = "H or W is odd, so no strided network fits them: use mlp or resize the data"
        fail(owner, "channels", list(channels),
             f"a depth of {depth} needs H and W divisible by {2**depth}, and the data are "
             f"{h}x{w}: {hint}")
    return depth


def _sizes(owner: object, channels: Sequence[int], h: int, w: int,
           kernel: int) -> list[tuple[int, int]]:
    """``(H, W)`` at each level of a strided network, from the image's to the smallest
    (``len(channels) + 1`` entries). Kernel 4 (padding 1) halves H and W exactly, so 2^depth must
    divide them (``_depth``); an odd kernel k (padding (k - 1) // 2, TensorFlow's "SAME" sizes)
    maps H to ceil(H / 2) for any H, e.g. 28 -> 14 -> 7 -> 4. Other kernels are refused."""
    if kernel == 4:
        depth = _depth(owner, channels, h, w, odd_kernel=True)
        return [(h >> i, w >> i) for i in range(depth + 1)]
    if kernel < 3 or kernel % 2 == 0:
        fail(owner, "kernel", kernel, "expected 4 (padding 1; 2^depth must divide H and W) or "
             "an odd size >= 3 (padding (kernel - 1) // 2; any H and W)")
    sizes = [(h, w)]
    for _ in range(_levels(owner, channels)):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


def _down(n_in: int, n_out: int, kernel: int = 4) -> nn.Conv2d:
    """Stride 2, padding (kernel - 1) // 2: H x W -> H/2 x W/2 for even H and W with kernel 4
    (padding 1), ceil(H/2) x ceil(W/2) for any H and W with an odd kernel."""
    return nn.Conv2d(n_in, n_out, kernel_size=kernel, stride=2, padding=(kernel - 1) // 2)


def _up(n_in: int, n_out: int, kernel: int = 4,
        output_padding: int | tuple[int, int] = 0) -> nn.ConvTranspose2d:
    """The transpose of ``_down``: h x w -> 2h x 2w with kernel 4, (2h - 1) x (2w - 1) with an
    odd kernel, plus ``output_padding`` rows and columns (0 or 1: which of the two sizes that
    ``_down`` maps to h the decoder needs)."""
    return nn.ConvTranspose2d(n_in, n_out, kernel_size=kernel, stride=2,
                              padding=(kernel - 1) // 2, output_padding=output_padding)


def _output_padding(kernel: int, small: tuple[int, int],
                    large: tuple[int, int]) -> tuple[int, int]:
    """The ``output_padding`` of ``_up`` that maps ``small`` back to ``large``, the size
    ``_down`` mapped to it (``_sizes``): 0 with kernel 4; 1 for an even size with an odd one."""
    return (large[0] - 2 * small[0] + kernel % 2, large[1] - 2 * small[1] + kernel % 2)


class ConvEncoder(_Batched):
    """Strided convolutions from an image ``in_shape = (C, H, W)`` to a vector, the DCGAN-style
    encoder of most convolutional VAEs: ``len(channels)`` convolutions (stride 2, ``kernel`` x
    ``kernel``, padding (kernel - 1) // 2), the i-th to ``channels[i]`` channels, each halving H
    and W, with ``activation`` after each; then the ``channels[-1] x h x w`` features of the last
    level are flattened, pass through the affine layers of ``hidden`` (``activation`` after each)
    and an affine layer gives ``prod(out_shape)`` outputs (linear, as the encoder reads a location
    and a log-variance from them).

    ``kernel = 4`` (padding 1) halves H and W exactly: any H and W that 2^depth divides (28x20
    Frey Face, 28x28 MNIST, 32x32 CIFAR-10 with the default depth of 2); other shapes are refused
    when the network is built. An odd ``kernel`` maps H to ceil(H / 2) for any H (28 -> 14 -> 7 ->
    4). The flattened features keep where things are in the image, which a global pooling would
    lose.

    The HVAE authors' encoder (Caterini et al. 2018, after Salimans et al. 2015): ``kernel=5,
    channels=[16, 32, 32], hidden=[450], activation="softplus"``.

    ``init`` and ``init_std`` as ``MLP``.
    """

    @checked
    def __init__(
        self,
        in_shape: Sequence[PositiveInt],
        out_shape: Sequence[PositiveInt],
        channels: Sequence[PositiveInt] = (32, 64),
        activation: Activation = "relu",
        init: Init | None = None,
        init_std: PositiveFloat | None = None,
        kernel: PositiveInt = 4,
        hidden: Sequence[PositiveInt] = (),
    ) -> None:
        c, h, w = _image(self, "in_shape", in_shape)
        channels = list(channels)
        sizes = _sizes(self, channels, h, w, kernel)
        layers: list[nn.Module] = []
        for n_in, n_out in zip([c, *channels[:-1]], channels):
            layers += [_down(n_in, n_out, kernel), ACTIVATIONS[activation]()]
        layers.append(nn.Flatten())
        features = [channels[-1] * sizes[-1][0] * sizes[-1][1], *hidden]
        for n_in, n_out in zip(features[:-1], features[1:]):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        super().__init__(*layers, nn.Linear(features[-1], _size(out_shape)))
        self._shapes(in_shape, (c, h, w), out_shape)
        initialise(self, init, init_std)


class ConvDecoder(_Batched):
    """Transposed convolutions from a vector to an image ``out_shape = (C', H, W)``, the mirror
    of ``ConvEncoder`` with the same ``channels``, ``hidden`` and ``kernel`` (listed from the
    image side, as the encoder's): affine layers from the flattened input through ``hidden[-1],
    ..., hidden[0]`` (``activation`` after each) to the ``channels[-1] x h x w`` features of the
    encoder's last level, then ``len(channels)`` transposed convolutions (stride 2, ``kernel`` x
    ``kernel``, padding (kernel - 1) // 2), each doubling H and W back to the encoder's size at
    that level, through ``channels[-2], ..., channels[0]`` to the ``C'`` output channels the
    likelihood needs, with ``activation`` before each; the output is linear (the likelihood maps
    it to its parameters).

    With ``kernel = 4`` any H and W that 2^depth divides, other shapes refused when the network is
    built; with an odd ``kernel`` any H and W (``ConvEncoder``). ``init`` and ``init_std`` as
    ``MLP``.
    """

    @checked
    def __init__(
        self,
        in_shape: Sequence[PositiveInt],
        out_shape: Sequence[PositiveInt],
        channels: Sequence[PositiveInt] = (32, 64),
        activation: Activation = "relu",
        init: Init | None = None,
        init_std: PositiveFloat | None = None,
        kernel: PositiveInt = 4,
        hidden: Sequence[PositiveInt] = (),
    ) -> None:
        c, h, w = _image(self, "out_shape", out_shape)
        channels = list(channels)
        sizes = _sizes(self, channels, h, w, kernel)
        size = (channels[-1], *sizes[-1])
        features = [_size(in_shape), *list(hidden)[::-1], _size(size)]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(features[:-2], features[1:-1]):
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        layers += [nn.Linear(features[-2], features[-1]), nn.Unflatten(1, size)]
        for n_in, n_out, small, large in zip(channels[::-1], [*channels[-2::-1], c],
                                             sizes[:0:-1], sizes[-2::-1]):
            layers += [ACTIVATIONS[activation](),
                       _up(n_in, n_out, kernel, _output_padding(kernel, small, large))]
        super().__init__(*layers)
        self._shapes(in_shape, (_size(in_shape),), out_shape)
        initialise(self, init, init_std)


class ResidualBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016, "Identity mappings"):
    ``x + conv(act(conv(act(x))))`` with 3x3 convolutions that keep the channels and the size, so
    the identity path carries the signal and the gradient through any number of blocks.

    Without normalisation the residual stream's variance grows with every block it adds to; the
    second convolution's initial weights are therefore scaled by ``residual_scale`` (the network
    passes 1 / sqrt(number of blocks), as Very Deep VAEs do) so the stream keeps its scale at
    initialisation whatever the depth.
    """

    def __init__(self, channels: int, activation: Activation, residual_scale: float = 1.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            ACTIVATIONS[activation](), nn.Conv2d(channels, channels, 3, padding=1),
            ACTIVATIONS[activation](), nn.Conv2d(channels, channels, 3, padding=1))
        with torch.no_grad():
            self.residual[-1].weight.mul_(residual_scale)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual(x)


def _residual_stage(channels: int, blocks: int, depth: int,
                    activation: Activation) -> list[ResidualBlock]:
    """The ``blocks`` residual blocks of one resolution of a network with ``depth`` resolutions,
    their branches scaled by 1 / sqrt(blocks x depth), the number of blocks in the whole stream
    (``ResidualBlock``)."""
    scale = (blocks * depth) ** -0.5
    return [ResidualBlock(channels, activation, scale) for _ in range(blocks)]


class ResNetEncoder(_Batched):
    """A small residual encoder (as the ResNet VAEs of the IAF paper and Lightning-Bolts, without
    their BatchNorm): ``ConvEncoder`` with ``blocks`` ``ResidualBlock``s at each resolution.

    A strided stem convolution (kernel 4, stride 2, padding 1) from C to ``channels[0]``
    channels at H/2 x W/2; per level i, ``blocks`` residual blocks at ``channels[i]`` channels,
    then, between levels, ``activation`` and a strided convolution to ``channels[i + 1]``
    channels at half the size; after the last level ``activation``, flatten, and an affine layer
    to ``prod(out_shape)`` (linear). ``len(channels)`` halvings: any H and W that
    2^len(channels) divides, as ``ConvEncoder``; other shapes are refused when it is built.

    No normalisation layer: BatchNorm makes each point's output depend on the rest of its
    minibatch (so the bound of one image would change with its batch-mates) and computes a
    different function in evaluation than in training; the pre-activation design with scaled
    residual branches (``ResidualBlock``) trains stably without it at these depths.
    """

    @checked
    def __init__(
        self,
        in_shape: Sequence[PositiveInt],
        out_shape: Sequence[PositiveInt],
        channels: Sequence[PositiveInt] = (32, 64),
        blocks: PositiveInt = 2,
        activation: Activation = "relu",
    ) -> None:
        c, h, w = _image(self, "in_shape", in_shape)
        channels = list(channels)
        depth = _depth(self, channels, h, w)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip([c, *channels[:-1]], channels)):
            if i > 0:
                layers.append(ACTIVATIONS[activation]())
            layers.append(_down(n_in, n_out))
            layers += _residual_stage(n_out, blocks, depth, activation)
        features = channels[-1] * (h >> depth) * (w >> depth)
        super().__init__(*layers, ACTIVATIONS[activation](), nn.Flatten(),
                         nn.Linear(features, _size(out_shape)))
        self._shapes(in_shape, (c, h, w), out_shape)


class ResNetDecoder(_Batched):
    """The mirror of ``ResNetEncoder`` with the same ``channels`` (listed from the image side):
    an affine layer from the flattened input to ``channels[-1] x H/2^depth x W/2^depth``
    features; per level, from the smallest, ``blocks`` residual blocks at that level's channels,
    then ``activation`` and a transposed convolution (kernel 4, stride 2, padding 1) doubling H
    and W, to the next level's channels, the last one to the ``C'`` output channels of
    ``out_shape = (C', H, W)`` that the likelihood needs (linear output). Any H and W that
    2^len(channels) divides; no normalisation, for the reasons ``ResNetEncoder`` gives.
    """

    @checked
    def __init__(
        self,
        in_shape: Sequence[PositiveInt],
        out_shape: Sequence[PositiveInt],
        channels: Sequence[PositiveInt] = (32, 64),
        blocks: PositiveInt = 2,
        activation: Activation = "relu",
    ) -> None:
        c, h, w = _image(self, "out_shape", out_shape)
        channels = list(channels)
        depth = _depth(self, channels, h, w)
        size = (channels[-1], h >> depth, w >> depth)
        layers: list[nn.Module] = [nn.Linear(_size(in_shape), _size(size)), nn.Unflatten(1, size)]
        for n_in, n_out in zip(channels[::-1], [*channels[-2::-1], c]):
            layers += _residual_stage(n_in, blocks, depth, activation)
            layers += [ACTIVATIONS[activation](), _up(n_in, n_out)]
        super().__init__(*layers)
        self._shapes(in_shape, (_size(in_shape),), out_shape)
