"""A conditional linear-Gaussian model whose log p(x|y) and exact posterior q(z|x, y) are known in
closed form, for the tests of conditional models (tests/test_conditional.py, tests/test_m2.py):

    p(z|y) = N(MU[y], I),  p(x|z, y) = N(diag(B) z + C[:, y], sigma^2 I),

so x|y ~ N(B MU[y] + C[:, y], diag(B^2) + sigma^2 I): the classes share one covariance, and
p(y|x) is a linear softmax of x."""

from __future__ import annotations

from functools import partial

import torch
from linear_gaussian import set_affine
from torch.distributions import MultivariateNormal

from vae_lightning.conditional import ClassNormal, Conditioned
from vae_lightning.likelihoods import Decoder, GaussianFixed
from vae_lightning.module import VAE
from vae_lightning.nets import MLP
from vae_lightning.objectives.base import Objective
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.posteriors import Encoder, Gaussian

LINEAR = partial(MLP, hidden=())
CONDITIONED = partial(Conditioned, net=LINEAR, classes=2)
SHAPE = (1, 1, 3)
SIGMA = 0.5
B = torch.tensor([1.5, -0.7, 2.0])  # p(x|z, y) = N(diag(B) z + C[:, y], sigma^2 I)
C = torch.tensor([[0.3, -1.0], [0.5, 0.2], [-0.4, 1.1]])
MU = torch.tensor([[1.0, -0.5, 0.0], [-1.0, 0.5, 2.0]])  # p(z|y) = N(MU[y], I)


def model(objective: Objective | None = None) -> VAE:
    """The conditional linear-Gaussian model with q(z|x, y) its exact posterior:
    precision I + B^2 / sigma^2, mean v (MU[y] + B (x - C[:, y]) / sigma^2)."""
    torch.manual_seed(0)
    encoder = Encoder(CONDITIONED, Gaussian(), SHAPE, latent=3)
    decoder = Decoder(CONDITIONED, GaussianFixed(SIGMA, mean_activation="identity"), SHAPE,
                      latent=3)
    prior = ClassNormal(3, classes=2)
    with torch.no_grad():
        prior.loc.copy_(MU)
    set_affine(decoder.net.net, torch.cat([torch.diag(B), C], 1), torch.zeros(3))
    v = 1 / (1 + B**2 / SIGMA**2)
    loc_weight = torch.cat([torch.diag(v * B / SIGMA**2), (v[:, None] * (MU.T - B[:, None] * C
                                                                          / SIGMA**2))], 1)
    set_affine(encoder.net.net, torch.cat([loc_weight, torch.zeros(3, 5)]),
               torch.cat([torch.zeros(3), v.log()]))
    return VAE(encoder, decoder, prior, objective or ELBO(), classes=2, data_shape=SHAPE).eval()


def log_p(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(x|y) = log N(x; B MU[y] + C[:, y], diag(B^2) + sigma^2 I)."""
    mean = B * MU[y] + C.T[y]
    return MultivariateNormal(mean, torch.diag(B**2 + SIGMA**2)).log_prob(x.flatten(1))


def data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    y = torch.arange(n) % 2
    z = MU[y] + torch.randn(n, 3)
    return (B * z + C.T[y] + SIGMA * torch.randn(n, 3)).reshape(n, *SHAPE), y
