"""What the flow posteriors share: q(z|x) is a diagonal Gaussian N(mu, diag sigma^2) (the
encoder's first 2 D outputs, as ``Gaussian``) pushed through maps z_k = f_k(z_{k-1}), scored by
the change of variables

    log q(z_K|x) = log N(z_0; mu, diag sigma^2) - sum_k log |det df_k/dz_{k-1}|

through the forward pass (``parts.scored_sample``: a map need not have a computable inverse).
``location`` is the maps applied to the base's mean (the flow's mean has no closed form), and
there is no closed-form spread (``stddev``).
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution, Transform, TransformedDistribution

from . import NO_MEAN, Family, Gaussian


class Flow(Family):
    """A Gaussian base (2 x latent network outputs) and maps whose parameters are the rest."""

    _base = Gaussian()

    def location(self, q: Distribution) -> Tensor:
        """The flow applied to the base's mean (the flow's mean has no closed form)."""
        z = q.base_dist.mean
        for transform in q.transforms:
            z = transform(z)
        return z

    def stddev(self, q: Distribution) -> None:
        return None

    def min_latent(self) -> int:
        """The smallest latent size the family is defined for."""
        return 1

    def latent_of(self, params: Tensor) -> int:
        """The latent size D for which this family takes ``params.shape[-1]`` outputs."""
        n = params.shape[-1]
        latent = self.min_latent()
        while self.n_params(latent) < n:
            latent += 1
        if self.n_params(latent) != n:
            raise ValueError(f"{self!r} takes n_params(latent) network outputs; {n} is that "
                             "number for no latent size.")
        return latent

    def flow(self, params: Tensor, latent: int, maps: list[Transform]) -> Distribution:
        """The base N(mu, diag sigma^2) of ``params[..., :2 latent]`` pushed through ``maps``."""
        return FlowDistribution(self._base(params[..., :2 * latent]), maps, validate_args=False)


class FlowDistribution(TransformedDistribution):
    """torch's TransformedDistribution, whose ``mean`` says what to use instead: a flow's mean
    has no closed form (torch's raised a bare NotImplementedError)."""

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(NO_MEAN)
