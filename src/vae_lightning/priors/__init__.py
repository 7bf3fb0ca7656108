"""Priors p(z) over the latent space: N(0, I), a mixture of Gaussians and the VampPrior (the
options of ``model/prior``). Whether KL(q || p) has a closed form is asked of
torch.distributions' KL registry (``objectives.base.closed_form_kl``), not of the prior."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    register_kl,
)
from torch.distributions.kl import _kl_independent_independent

from vae_lightning.args import PositiveFloat, PositiveInt, checked
from vae_lightning.parts import Conditional, capturable_sample


class Prior(nn.Module):
    """A prior p(z) (``parts.Prior``): exposes ``distribution()``, ``log_prob(z)`` and
    ``sample(n)``; ``features`` it offers (``parts.FEATURES``: "factorized") and the posterior
    features it ``requires``. A prior whose log p(z) falls quadratically in z (Gaussian tails)
    requires a posterior with a finite second moment: otherwise KL(q || p) is infinite."""

    features: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset({"finite_variance"})
    # What the bound on log p(x) is under this prior, where a reader comparing it with other
    # models' must be told (vae-eval's and vae-summarize's bound_of; log_likelihood.bound_of).
    bound_note: str = ""

    @checked
    def __init__(self, latent: PositiveInt) -> None:
        super().__init__()
        self.latent = latent

    def bind(self, encoder: nn.Module) -> None:
        """Called once with the model's encoder q(z|x); a prior built from it keeps it."""

    def distribution(self) -> Distribution:
        raise NotImplementedError

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int) -> Tensor:
        return self.distribution().sample((n,))


class StandardNormal(Prior):
    """p(z) = N(0, I), the paper's prior; KL to a diagonal Gaussian is analytic (Appendix B)."""

    features = frozenset({"factorized"})

    def __init__(self, latent: PositiveInt) -> None:
        super().__init__(latent)
        self.register_buffer("loc", torch.zeros(latent))
        self.register_buffer("scale", torch.ones(latent))
        self._distribution: UnitNormal | None = None

    def distribution(self) -> Distribution:
        """N(0, I), built once per device and dtype of the buffers (it has no parameters)."""
        built = self._distribution
        if built is None or built.base_dist.loc is not self.loc:
            built = self._distribution = UnitNormal(
                Normal(self.loc, self.scale, validate_args=False), 1)
        return built


class DiagonalGaussianMixture(MixtureSameFamily):
    """A mixture of diagonal Gaussians (``Independent(Normal, 1)`` components, the mixture and
    VampPrior priors' with a Gaussian q) whose ``log_prob`` takes the squared distances to all K
    components as matrix products, sum_d z_d^2 / s_kd^2 - 2 z_d m_kd / s_kd^2 + m_kd^2 / s_kd^2,
    in double precision (the expansion cancels where z is near a mean; double keeps the error
    near 1e-12 of the terms): [N, d] x [d, K] instead of torch's [N, K, d] broadcast, which made
    the VampPrior's k = 5000 evaluation slow (docs/benchmarks.md). The same density, to float32
    rounding of the result."""

    def log_prob(self, z: Tensor) -> Tensor:
        base = self.component_distribution.base_dist
        batch, d = z.shape[:-1], z.shape[-1]
        flat = z.reshape(-1, d).double()
        precision = base.scale.double().pow(-2)  # [K, d]
        loc = base.loc.double()
        quadratic = (flat.pow(2) @ precision.T - 2 * flat @ (loc * precision).T
                     + (loc.pow(2) * precision).sum(-1))
        log_norm = base.scale.double().log().sum(-1) + 0.5 * d * math.log(2 * math.pi)
        log_weights = torch.log_softmax(self.mixture_distribution.logits.double(), -1)
        log_p = torch.logsumexp(log_weights - log_norm - 0.5 * quadratic, -1)
        return log_p.to(z.dtype).reshape(batch)


def mixture(weights: Categorical, components: Distribution) -> Distribution:
    """The mixture of ``components`` (batch [K]) with ``weights``: a ``DiagonalGaussianMixture``
    where they are diagonal Gaussians over one event dimension, else torch's
    ``MixtureSameFamily``."""
    diagonal = (isinstance(components, Independent) and type(components.base_dist) is Normal
                and components.reinterpreted_batch_ndims == 1
                and components.base_dist.loc.dim() == 2)
    return (DiagonalGaussianMixture if diagonal else MixtureSameFamily)(weights, components)


class UnitNormal(Independent):
    """N(0, I) over the latent vector: ``Independent(Normal(0, 1), 1)``, a type of its own so that
    torch.distributions' KL registry dispatches KL(q || N(0, I)) to ``_kl_to_unit_normal``."""

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """``parts.capturable_sample``: the same numbers as ``Normal.sample`` on the CPU, and a
        draw a CUDA graph can capture (the wake-sleep sleep phase draws from the prior inside
        the step)."""
        return capturable_sample(self, torch.Size(sample_shape))


@register_kl(Independent, UnitNormal)
def _kl_to_unit_normal(q: Independent, p: UnitNormal) -> Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) = sum_j 0.5 (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)
    (the paper's Appendix B), the operations of torch's Normal-Normal KL with the prior's 0 and 1
    left out (exact: x / 1 = x and x - 0 = x), so the numbers are the same; any other q goes to
    torch's Independent-Independent rule."""
    base = q.base_dist
    if type(base) is not Normal or q.reinterpreted_batch_ndims != 1:
        return _kl_independent_independent(q, p)
    var_ratio = base.scale.pow(2)
    return (0.5 * (var_ratio + base.loc.pow(2) - 1 - var_ratio.log())).sum(-1)


class MixtureOfGaussians(Prior):
    """A learnable mixture of K diagonal Gaussians,
    p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2) with pi = softmax(logits).

    Weights start uniform, scales at 1 and means at N(0, init_spread^2), so the components start
    spread over the region a N(0, I) prior covers. KL(q || p) has no closed form (Monte-Carlo KL).
    """

    @checked
    def __init__(self, latent: PositiveInt, n_components: PositiveInt = 10,
                 init_spread: PositiveFloat = 1.0) -> None:
        super().__init__(latent)
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.loc = nn.Parameter(init_spread * torch.randn(n_components, latent))
        self.log_scale = nn.Parameter(torch.zeros(n_components, latent))

    def distribution(self) -> Distribution:
        components = Independent(Normal(self.loc, self.log_scale.exp(), validate_args=False), 1)
        return mixture(Categorical(logits=self.logits), components)


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q_phi(z | u_k), the mixture of the
    encoder's posteriors at K learnable pseudo-inputs u_k of shape ``data_shape``.

    The pseudo-inputs start at N(init_mean, init_std^2) per pixel (inside the [0, 1] data range
    by default). The encoder is the model's own (``bind``), kept out of this module's parameters
    and ``state_dict``. KL(q || p) has no closed form (Monte-Carlo KL).
    """

    @checked
    def __init__(
        self,
        latent: PositiveInt,
        data_shape: Sequence[PositiveInt],
        n_components: PositiveInt = 500,
        init_mean: float = 0.5,
        init_std: PositiveFloat = 0.05,
    ) -> None:
        super().__init__(latent)
        u = init_mean + init_std * torch.randn(n_components, *data_shape)
        self.pseudo_inputs = nn.Parameter(u)
        self._encoder: list[nn.Module] = []  # a plain list: the encoder is not registered twice

    # A mixture of q(z|u_k): its density is q's, evaluated at samples of other q(z|x).
    requires = frozenset({"density"})

    def bind(self, encoder: nn.Module) -> None:
        if any(isinstance(m, Conditional) for m in encoder.modules()):
            raise ValueError("the VampPrior's components are q(z|u_k) at its pseudo-inputs u_k, "
                             "which an encoder given a class label (a conditional model's) "
                             "cannot score without labels; use model/prior=normal or "
                             "class_normal")
        self._encoder[:] = [encoder]

    def distribution(self) -> Distribution:
        if not self._encoder:
            raise RuntimeError("VampPrior.bind(encoder) was not called: the prior is the "
                               "encoder's posterior at the pseudo-inputs.")
        components = self._encoder[0](self.pseudo_inputs)  # batch [K], event [latent]
        weights = Categorical(logits=self.pseudo_inputs.new_zeros(len(self.pseudo_inputs)))
        return mixture(weights, components)

