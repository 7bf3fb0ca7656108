"""MADE (Germain et al. 2015), the autoregressive network of the IAF posterior
(``posteriors.iaf``) and of the masked autoregressive flow prior (``priors.flow``).

For inputs z in R^D taken in the order ``permutation`` (``permutation[j]`` is the j-th variable,
degree j + 1), masked linear layers give outputs (m_i, s_i) for each variable i that depend on
the variables before it only: hidden unit k of degree d_k sees inputs of degree <= d_k, and the
outputs of variable i see hidden units of degree < deg(i). So the Jacobian of (m, s) in z is
strictly triangular in that order, and an affine map z_i -> f(z_i; m_i, s_i) has a triangular
Jacobian whose log-determinant is the sum of its diagonal terms. A context h (the encoder's
summary of x, for IAF) enters the first hidden layer through an unmasked linear map: it may
inform every output.

The masks are buffers computed from the sizes (not saved in checkpoints: a file cannot change
which connections exist), so the network builds on PyTorch's meta device too (``checkpoints``
builds a checkpoint's model there first). Pyro's ``AutoRegressiveNN`` does the same job, but
its masks are saved weights and it cannot be built on the meta device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class MADE(nn.Module):
    """(m, s) = MADE(z, h): two outputs per variable of z ``[..., latent]``, each depending on the
    variables before it in ``permutation`` (reversed order when ``reverse``) and on the context h
    ``[..., context]`` (none when ``context`` is 0), through ``hidden`` ELU layers. The output
    layer starts at zero (m = s = 0 for every input). ``fixed=True`` computes with the weights
    held fixed (detached): a q held fixed holds its flow's weights fixed too (``posteriors.iaf``).
    """

    def __init__(self, latent: int, hidden: Sequence[int], context: int = 0,
                 reverse: bool = False) -> None:
        super().__init__()
        self.latent, self.context = latent, context
        order = torch.arange(latent)
        self.register_buffer("permutation", order.flip(0) if reverse else order,
                             persistent=False)
        degree_in = torch.empty(latent, dtype=torch.long)
        degree_in[self.permutation] = torch.arange(1, latent + 1)
        sizes = [latent, *hidden]
        degrees = [degree_in]
        for size in hidden:  # hidden degrees cycle through 1 .. D-1 (0 for D = 1: context only)
            degrees.append(torch.arange(size) % max(latent - 1, 1) + min(latent - 1, 1))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Linear(sizes[-1], 2 * latent)
        self.context_layer = nn.Linear(context, hidden[0], bias=False) if context else None
        for k in range(len(self.layers)):
            self.register_buffer(f"mask{k}", (degrees[k + 1][:, None] >= degrees[k][None, :])
                                 .float(), persistent=False)
        self.register_buffer("mask_out", (degree_in.repeat(2)[:, None] > degrees[-1][None, :])
                             .float(), persistent=False)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def get_permutation(self) -> Tensor:
        return self.permutation

    def forward(self, z: Tensor, context: Tensor | None = None,
                fixed: bool = False) -> tuple[Tensor, Tensor]:
        """(m, s) in z's precision whatever autocast says: they enter a log-density (the flow's
        log-determinant is a sum of s), which mixed precision would round."""
        with torch.autocast(z.device.type, enabled=False):
            return self._forward(z, context, fixed)

    def _forward(self, z: Tensor, context: Tensor | None, fixed: bool) -> tuple[Tensor, Tensor]:
        def weights(layer: nn.Linear, mask: Tensor) -> tuple[Tensor, Tensor | None]:
            weight, bias = layer.weight * mask, layer.bias
            return (weight.detach(), None if bias is None else bias.detach()) if fixed else (
                weight, bias)

        h = z
        for k, layer in enumerate(self.layers):
            h = F.linear(h, *weights(layer, getattr(self, f"mask{k}")))
            if k == 0 and self.context_layer is not None:
                w = self.context_layer.weight
                h = h + F.linear(context, w.detach() if fixed else w)
            h = F.elu(h)
        out = F.linear(h, *weights(self.out, self.mask_out))
        mean, scale = out.unflatten(-1, (2, self.latent)).unbind(-2)
        return mean, scale
