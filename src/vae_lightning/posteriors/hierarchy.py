"""Stochastic layers (Burda, Grosse & Salakhutdinov 2015, Sec. 5): the latent vector is a stack
z = [z_1, ..., z_L], z_1 the bottom layer (the one the decoder reads: ``Decoder(latent=|z_1|)``),
with bottom-up inference and top-down generation,

    q(z|x) = q(z_1|x) prod_{l=2..L} q(z_l | z_{l-1})        (``BottomUp``, this module)
    p(z)   = p(z_L)   prod_{l=1..L-1} p(z_l | z_{l+1})      (``priors.hierarchy.TopDown``)

each conditional a posterior family (Gaussian by default) whose parameters a network computes
from its parent layer. ``Chain`` is such a product as one distribution over the whole vector, so
every objective, ``log_likelihood`` (k importance samples over all layers) and ``vae-eval`` see one
q(z|x) and one p(z): log q(z|x) and log p(z) are sums over the layers, and KL(q || p) has no
closed form (Monte-Carlo KL, estimator A). With one layer, ``BottomUp`` is its family alone
and ``TopDown`` is N(0, I): the same model, draws and numbers as the flat options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from vae_lightning.args import PositiveInt, checked, fail

from . import NO_MEAN, Family, Gaussian

NO_MOMENT = ("this q(z|x), a chain of stochastic layers each given its parent's draw, has no {} "
             "in closed form: estimate it from draws, q.sample((n,))")


class Chain(Distribution):
    """z = [z_1, ..., z_L] with density first(z_(1)) prod_i links[i](z_(i))(z_(i+1)), where
    z_(1), z_(2), ... are the blocks in sampling order: z_1, z_2, ... (``top_down=False``), or
    z_L, z_{L-1}, ... (``top_down=True``); ``sizes`` are |z_1|, ..., |z_L|, the order of the
    vector. Each link maps a parent block to the distribution of its child, batched like it."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, first: Distribution, links: Sequence[Callable[[Tensor], Distribution]],
                 sizes: Sequence[int], top_down: bool = False) -> None:
        self.first, self.links, self.sizes = first, list(links), list(sizes)
        self.top_down = top_down
        super().__init__(first.batch_shape, torch.Size([sum(sizes)]), validate_args=False)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(NO_MEAN)

    # A layer's spread and the chain's entropy are integrals over its parents' draws, with no
    # closed form beyond the first layer: torch's NotImplementedError said nothing at all.
    @property
    def variance(self) -> Tensor:  # stddev is its square root
        raise NotImplementedError(NO_MOMENT.format("variance or standard deviation"))

    def entropy(self) -> Tensor:
        raise NotImplementedError(NO_MOMENT.format("entropy") + " (-q.log_prob of them, "
                                  "averaged)")

    def _sampling_order(self, blocks: list[Tensor]) -> list[Tensor]:
        """Blocks in the vector's order -> in sampling order (and back: the map is its inverse)."""
        return blocks[::-1] if self.top_down else blocks

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple[int, ...] = ()
                             ) -> tuple[Tensor, Tensor]:
        """Ancestral sampling, each layer reparameterized given its parent, and log-density of
        the draw from the same passes (each link's network runs once)."""
        z = self.first.rsample(torch.Size(sample_shape))
        log_prob, blocks = self.first.log_prob(z), [z]
        for link in self.links:
            child = link(z)
            z = child.rsample()
            log_prob = log_prob + child.log_prob(z)
            blocks.append(z)
        return torch.cat(self._sampling_order(blocks), dim=-1), log_prob

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        blocks = self._sampling_order(list(value.split(self.sizes, dim=-1)))
        log_prob = self.first.log_prob(blocks[0])
        for link, parent, child in zip(self.links, blocks, blocks[1:]):
            log_prob = log_prob + link(parent).log_prob(child)
        return log_prob

    def layer_log_probs(self, value: Tensor) -> list[Tensor]:
        """log-density of each layer given its parent, in the vector's order (z_1 first): the
        per-layer terms of log q(z|x) or log p(z), e.g. for each layer's KL."""
        blocks = self._sampling_order(list(value.split(self.sizes, dim=-1)))
        terms = [self.first.log_prob(blocks[0])]
        terms += [link(parent).log_prob(child)
                  for link, parent, child in zip(self.links, blocks, blocks[1:])]
        return self._sampling_order(terms)

    def location(self, family: Family) -> Tensor:
        """Each layer's location given its parent's location, from the first layer on: the point
        that stands for the chain (its mean is an integral over the parents, with no closed
        form beyond the first layer)."""
        z = family.location(self.first)
        blocks = [z]
        for link in self.links:
            z = family.location(link(z))
            blocks.append(z)
        return torch.cat(self._sampling_order(blocks), dim=-1)


@torch.no_grad()
def layer_kls(q: Distribution, p: Distribution) -> Tensor | None:
    """Each layer's KL, E_q[log q(z_l | its parent) - log p(z_l | its parent)], ``[L, batch]``,
    z_1 first, from the very draws of the whole KL(q || p) that vae-eval reports beside them
    (``log_likelihood.posterior_kl``: KL_DRAWS draws per point, in a forked random stream), so
    that they add up to it; None unless q and p are both chains over the same layers. (From one
    draw of the evaluation's own stream they did not: 0.57 + 0.03 nats under a KL of 0.51, or a
    layer's "KL -0.01 nats".)"""
    if not (isinstance(q, Chain) and isinstance(p, Chain)) or q.sizes != p.sizes:
        return None
    from vae_lightning.log_likelihood import KL_DRAWS  # which imports this module
    from vae_lightning.parts import scored_draws

    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        z, _ = scored_draws(q, KL_DRAWS)
    return (torch.stack(q.layer_log_probs(z)) - torch.stack(p.layer_log_probs(z))).mean(1)


def check_total(layers: Sequence[int], latent: int) -> None:
    """Refuse stochastic layers whose sizes do not add up to the model's latent size."""
    if sum(layers) != latent:
        raise ValueError(f"the stochastic layers {list(layers)} add up to {sum(layers)} latent "
                         f"units, but the model's latent size is {latent}: set "
                         f"model.latent={sum(layers)} (model=hierarchy and model=ladder set it "
                         "from the layers).")


def link(family: Family, net: nn.Module, fixed: bool) -> Callable[[Tensor], Distribution]:
    """The conditional ``family(net(parent))``; ``fixed`` holds the network's weights fixed
    (detached), as DReG's q with its parameters held fixed needs."""
    if not fixed:
        return lambda parent: family(net(parent).float())
    weights = {name: p.detach() for name, p in net.named_parameters()}
    return lambda parent: family(torch.func.functional_call(net, weights, (parent,)).float())


class BottomUp(Family, nn.Module):
    """q(z|x) = q(z_1|x) prod_l q(z_l | z_{l-1}) over ``layers`` = [|z_1|, ..., |z_L|]: the
    encoder's network gives q(z_1|x)'s parameters, and ``net`` (called with the sizes, as the
    encoder's: e.g. ``nets.MLP``) maps z_{l-1} to q(z_l|z_{l-1})'s, each a ``family``. The model's
    latent size is the sum of ``layers``; the decoder reads z_1 (``model.decoder.latent``)."""

    # A chain of Gaussian layers; one layer offers what its family does (``__init__``).
    features = frozenset({"rsample", "density", "finite_variance"})

    @checked
    def __init__(self, layers: Sequence[PositiveInt], net: Callable[..., nn.Module],
                 family: Family | None = None) -> None:
        nn.Module.__init__(self)
        self.layers, self.family = list(layers), family if family is not None else Gaussian()
        if not self.layers:
            fail(self, "layers", self.layers, "the sizes of one or more stochastic layers, the "
                 "bottom (z_1, read by the decoder) first, e.g. [100, 50]")
        self.nets = nn.ModuleList(net((below,), (self.family.n_params(above),))
                                  for below, above in zip(self.layers, self.layers[1:]))
        # What the family offers, less a product over all dimensions once layers depend.
        self.features = (self.family.features if not self.nets
                         else self.family.features - {"factorized"})

    def n_params(self, latent: int) -> int:
        check_total(self.layers, latent)
        return self.family.n_params(self.layers[0])

    def __call__(self, params: Tensor) -> Distribution:
        if not self.nets:  # one layer: the family's own q(z_1|x)
            return self.family(params)
        fixed = not params.requires_grad  # DReG's q held fixed: the layers' weights too
        return Chain(self.family(params),
                     [link(self.family, net, fixed) for net in self.nets], self.layers)

    def location(self, q: Distribution) -> Tensor:
        return q.location(self.family) if isinstance(q, Chain) else self.family.location(q)

    def stddev(self, q: Distribution) -> Tensor | None:
        return None if isinstance(q, Chain) else self.family.stddev(q)

    def informative(self) -> Family:
        """q(z_1|x)'s family: given z_1 the upper layers do not depend on x, so I_q(x; z) =
        I_q(x; z_1) + I_q(x; z_2..L | z_1) = I_q(x; z_1), and the params are z_1's."""
        return self.family

    def __repr__(self) -> str:
        return f"BottomUp(layers={self.layers}, family={self.family!r})"
