"""Multilayer perceptrons, the encoder and decoder bodies of the paper (Appendix C)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Sequential):
    """Affine layers with a nonlinearity between them: ``in -> hidden... -> out``, linear output.

    ``init_std`` draws every weight and bias from N(0, init_std^2), as the paper does with 0.01;
    ``None`` keeps PyTorch's default initialisation.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        init_std: float | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; accepted: {', '.join(sorted(ACTIVATIONS))}."
            )
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        if init_std is not None:
            for p in self.parameters():
                nn.init.normal_(p, 0.0, init_std)
