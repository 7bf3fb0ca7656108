"""Networks: the bodies of the encoder and the decoder.

A network maps a tensor of shape ``[..., *in_shape]`` to ``[..., *out_shape]``; the encoder and
decoder give it the shapes their data and latent space fix (``functools.partial`` / Hydra's
``_partial_: true`` hold the rest of its arguments). The paper's networks are MLPs (Appendix C).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from vae_lightning.args import PositiveFloat, PositiveInt, checked

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}
Activation = Literal["tanh", "relu", "elu", "gelu", "softplus", "leaky_relu"]
assert set(Activation.__args__) == set(ACTIVATIONS)  # noqa: S101  (one list, two spellings)


class MLP(nn.Sequential):
    """Affine layers with a nonlinearity between them, ``prod(in_shape) -> hidden... ->
    prod(out_shape)``, linear output; the input's trailing ``in_shape`` is flattened and the
    output unflattened to ``out_shape``.

    ``init_std`` draws every weight and bias from N(0, init_std^2), as the paper does with 0.01;
    ``None`` keeps PyTorch's default initialisation.
    """

    @checked
    def __init__(
        self,
        in_shape: Sequence[PositiveInt],
        out_shape: Sequence[PositiveInt],
        hidden: Sequence[PositiveInt] = (400,),
        activation: Activation = "relu",
        init_std: PositiveFloat | None = None,
    ) -> None:
        in_features, out_features = _size(in_shape), _size(out_shape)
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.in_dims, self.out_shape = len(in_shape), tuple(out_shape)
        if init_std is not None:
            for p in self.parameters():
                nn.init.normal_(p, 0.0, init_std)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(-self.in_dims)).unflatten(-1, self.out_shape)


def _size(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
