"""Networks: the bodies of the encoder and the decoder.

A network maps a tensor of shape ``[..., *in_shape]`` to ``[..., *out_shape]``, for any number of
leading batch dimensions; the encoder and decoder give it the shapes their data and latent space
fix (``functools.partial`` / Hydra's ``_partial_: true`` hold the rest of its arguments). The
paper's networks are MLPs (Appendix C), here with the activations and initialisations every
network shares; the convolutional and residual networks (``conv_nets``) are the options of
``model/encoder`` and ``model/decoder`` for images, where an MLP ignores that neighbouring pixels
are related.

No network normalises over the batch (no BatchNorm): a data point's bound must not depend on
the other points of its minibatch, and evaluation must compute the same function as training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from vae_lightning.args import PositiveFloat, PositiveInt, checked, fail

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
Init = Literal["pytorch", "normal", "glorot_uniform"]  # see ``initialise``


class MLP(nn.Sequential):
    """Affine layers with a nonlinearity between them, ``prod(in_shape) -> hidden... ->
    prod(out_shape)``, linear output; the input's trailing ``in_shape`` is flattened and the
    output unflattened to ``out_shape``.

    ``init`` chooses the initial parameters (``initialise``): ``"normal"`` draws every weight and
    bias from N(0, ``init_std``^2), as the AEVB paper does with 0.01; ``"glorot_uniform"``
    draws weights from Glorot & Bengio's U(-a, a), a = sqrt(6 / (fan_in + fan_out)), with zero
    biases, as the IWAE paper's code; ``"pytorch"`` keeps PyTorch's default; ``None`` means
    ``"normal"`` when ``init_std`` is given, else ``"pytorch"``.

    ``log_input``: the network reads log(1 + x), for an encoder of counts (scVI's
    ``log_variational``): counts spread over orders of magnitude, and the first layer would
    otherwise be dominated by the largest ones. The likelihood still scores the counts.
    """

    @checked
    def __init__(
        self,
        in_shape: Sequence[PositiveInt],
        out_shape: Sequence[PositiveInt],
        hidden: Sequence[PositiveInt] = (400,),
        activation: Activation = "relu",
        init: Init | None = None,
        init_std: PositiveFloat | None = None,
        log_input: bool = False,
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
        self.log_input = log_input
        initialise(self, init, init_std)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(-self.in_dims)
        return super().forward(x.log1p() if self.log_input else x).unflatten(-1, self.out_shape)


def _size(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def initialise(module: nn.Module, init: Init | None, init_std: float | None) -> None:
    """Set the initial parameters of ``module``'s affine and convolutional layers (see ``MLP``);
    refuse ``init_std`` with an initialisation that has no standard deviation."""
    init = init or ("normal" if init_std is not None else "pytorch")
    if init == "normal":
        if init_std is None:
            fail(module, "init_std", None, "init=normal draws from N(0, init_std^2): give a "
                 "standard deviation, e.g. 0.01")
        for p in module.parameters():
            nn.init.normal_(p, 0.0, init_std)
    elif init_std is not None:
        fail(module, "init_std", init_std, f"init={init} takes no standard deviation: set "
             "init=normal, or init_std=null")
    elif init == "glorot_uniform":
        for layer in module.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
