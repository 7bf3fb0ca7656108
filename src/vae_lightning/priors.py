"""Priors p(z) over the latent space: N(0, I), a mixture of Gaussians and the VampPrior."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
)


class Prior(nn.Module):
    """A prior p(z): exposes ``distribution()``, ``log_prob(z)`` and ``sample(n)``.

    ``has_analytic_kl`` says whether KL(q || p) has a closed form for a Gaussian q (estimator B,
    eq. 7); otherwise the objective uses the Monte-Carlo KL (estimator A, eq. 6).
    """

    has_analytic_kl = False

    def __init__(self, latent: int) -> None:
        super().__init__()
        self.latent = latent

    def distribution(self) -> Distribution:
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int) -> Tensor:
        return self.distribution().sample((n,))


class StandardNormal(Prior):
    """p(z) = N(0, I), the paper's prior; KL to a diagonal Gaussian is analytic (Appendix B)."""

    has_analytic_kl = True

    def __init__(self, latent: int) -> None:
        super().__init__(latent)
        self.register_buffer("loc", torch.zeros(latent))
        self.register_buffer("scale", torch.ones(latent))

    def distribution(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)


class MixtureOfGaussians(Prior):
    """A learnable mixture of K diagonal Gaussians,
    p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with pi = softmax(logits).

    Weights start uniform, scales at 1 and means at N(0, init_spread^2), so the components start
    spread over the region a N(0, I) prior covers. KL(q || p) has no closed form (Monte-Carlo KL).
    """

    def __init__(self, latent: int, n_components: int = 10, init_spread: float = 1.0) -> None:
        super().__init__(latent)
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.loc = nn.Parameter(init_spread * torch.randn(n_components, latent))
        self.log_scale = nn.Parameter(torch.zeros(n_components, latent))

    def distribution(self) -> Distribution:
        components = Independent(Normal(self.loc, self.log_scale.exp(), validate_args=False), 1)
        return MixtureSameFamily(Categorical(logits=self.logits), components)


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q_phi(z | u_k), the mixture of the
    encoder's posteriors at K learnable pseudo-inputs u_k of size ``input_dim``.

    The pseudo-inputs start at N(init_mean, init_std^2) per pixel (inside the [0, 1] data range
    by default). The encoder is shared with the VAE (``vae.encoder``) and is kept out of this
    module's parameters and ``state_dict``. KL(q || p) has no closed form (Monte-Carlo KL).
    """

    def __init__(
        self,
        latent: int,
        input_dim: int,
        encoder: nn.Module,
        n_components: int = 500,
        init_mean: float = 0.5,
        init_std: float = 0.05,
    ) -> None:
        super().__init__(latent)
        u = init_mean + init_std * torch.randn(n_components, input_dim)
        self.pseudo_inputs = nn.Parameter(u)
        self._encoder = [encoder]  # a plain list, so the encoder is not registered a second time

    def distribution(self) -> Distribution:
        components = self._encoder[0](self.pseudo_inputs)  # batch [K], event [latent]
        weights = Categorical(logits=torch.zeros_like(self.pseudo_inputs[:, 0]))
        return MixtureSameFamily(weights, components)
