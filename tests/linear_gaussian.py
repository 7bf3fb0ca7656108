"""A two-layer linear-Gaussian model whose log p(x) and exact posterior are known in closed form,
for the tests of stochastic layers (tests/test_hierarchy.py, tests/test_ladder.py):

    p(z_2) = N(0, I_2),  p(z_1|z_2) = N(A z_2 + a, s1^2 I_3),  p(x|z_1) = N(B z_1 + b, sigma^2 I_3),

with A's rows and columns orthogonal and B diagonal, so that the exact posteriors are diagonal
Gaussians, which the chain's Gaussian layers can represent exactly."""

from functools import partial

import torch
from torch.distributions import MultivariateNormal

from vae_lightning.nets import MLP

LINEAR = partial(MLP, hidden=())  # one affine map: the model below is linear-Gaussian
A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
a = torch.tensor([0.5, -1.0, 0.3])
S1, SIGMA = 0.6, 0.4
B = torch.diag(torch.tensor([1.5, -0.7, 2.0]))
b = torch.tensor([0.1, 0.2, -0.3])


def set_affine(net: MLP, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        net[0].weight.copy_(weight)
        net[0].bias.copy_(bias)


def log_px(x: torch.Tensor) -> torch.Tensor:
    """The closed form: x ~ N(B a + b, B (A A^T + s1^2 I) B^T + sigma^2 I)."""
    cov = B @ (A @ A.T + S1**2 * torch.eye(3)) @ B.T + SIGMA**2 * torch.eye(3)
    return MultivariateNormal(B @ a + b, cov).log_prob(x.flatten(1))


def data(n: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    z2 = torch.randn(n, 2)
    z1 = z2 @ A.T + a + S1 * torch.randn(n, 3)
    return (z1 @ B.T + b + SIGMA * torch.randn(n, 3)).reshape(n, 1, 1, 3)
