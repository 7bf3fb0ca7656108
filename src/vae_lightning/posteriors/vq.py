"""Vector quantization, the VQ-VAE's posterior (van den Oord et al. 2017, "Neural discrete
representation learning", Sec. 3.1): the encoder's output z_e(x) is a map of P vectors of
``code_dim`` D, each replaced by its nearest of K codebook vectors e_k,

    z_q(x)_i = e_{k_i},  k_i = argmin_k ||z_e(x)_i - e_k||_2,

so q(k|x) is deterministic and one-hot (eq. 1): log q = 0 at the code map k(x), and with a
uniform prior over the K^P code maps KL(q || p) = P log K (``priors.codes``).

The argmin has no gradient: the decoder's gradient at z_q is copied to z_e (the straight-through
estimator, eq. 3's sg[.]), ``Quantized.rsample``. The codebook learns either by the loss
||sg[z_e] - e||^2 (``objectives.vq_vae``) or, with ``ema``, as exponential moving averages of the
vectors assigned to each code (the paper's Appendix A.1; Razavi et al. 2019, eqs. 4-6):

    N_k <- gamma N_k + (1 - gamma) n_k,   m_k <- gamma m_k + (1 - gamma) sum_{i: k_i = k} z_e_i,
    e_k = m_k / N~_k,   N~_k = (N_k + eps) / (n + K eps) n,  n = sum_k N_k,

n_k the minibatch's count of code k and N~ the Laplace-smoothed counts (no code divides by 0).
The averages move at each forward pass made in training mode with gradients enabled (a training
step; not validation, nor the no-grad probes made when the model is composed). They start as if
each code had been assigned its own vector once (N = 1, m = e), so a code no vector picks decays
towards the origin over ~1/(1 - gamma) steps instead of jumping away. Under DDP n_k and the
sums are those of every rank's minibatch (all-reduced), as one process would count the global
batch, and ``init="data"``'s start is rank 0's draw (broadcast): the ranks keep one codebook
(each rank's own start and averages had drifted apart, silently, the checkpoint rank 0's).

Initialisation: the paper's code draws the codebook from U(-1/K, 1/K) (``init="uniform"``);
encoder outputs of order 1 then all pick the few codes nearest the origin, and the others are
never chosen again (codebook collapse). ``init="data"`` (the default) sets the codebook, at the
first training step, to K vectors z_e drawn from that minibatch (with replacement where it has
fewer), the data-dependent start used against collapse (e.g. Dhariwal et al. 2020, Jukebox).

Layout: the latent vector z [..., latent] is read as a map [..., D, P] (P = latent / D), the
channel-major order in which a convolutional network's [D, h, w] output flattens, so that a
spatial map's positions keep their meaning; a prior over codes (``pixelcnn``) reads the same.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn import functional as F

from vae_lightning.args import PositiveFloat, PositiveInt, Range, checked
from vae_lightning.posteriors import Family

Decay = Annotated[float, Range(ge=0, lt=1)]


def as_map(z: Tensor, code_dim: int) -> Tensor:
    """z [..., D * P] as its P vectors [..., P, D] (channel-major, see the module's docstring)."""
    return z.unflatten(-1, (code_dim, -1)).transpose(-1, -2)


def as_latent(vectors: Tensor) -> Tensor:
    """The reverse of ``as_map``: P vectors [..., P, D] as z [..., D * P]."""
    return vectors.transpose(-1, -2).flatten(-2)


class Quantized(Distribution):
    """q(z|x) of the VQ-VAE: the point mass at z_q, the code map's codebook vectors; ``z_e`` the
    encoder's output, ``codes`` the chosen codes [..., P]. ``rsample`` is z_q in value with the
    straight-through gradient to z_e; ``log_prob`` is 0 (a one-hot q over codes, scored at its
    own code map, the only point it draws)."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, z_e: Tensor, z_q: Tensor, codes: Tensor) -> None:
        self.z_e, self.z_q, self.codes = z_e, z_q, codes
        super().__init__(z_e.shape[:-1], z_e.shape[-1:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return self.z_q

    @property
    def stddev(self) -> Tensor:
        return torch.zeros_like(self.z_q)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """z_e + sg[z_q - z_e]: z_q forward, the identity backward (straight-through)."""
        z = self.z_e + (self.z_q - self.z_e).detach()
        return z.expand(*sample_shape, *z.shape)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self.z_q.detach().expand(*sample_shape, *self.z_q.shape)

    def log_prob(self, z: Tensor) -> Tensor:
        return z.new_zeros(z.shape[:-1])

    def entropy(self) -> Tensor:
        return self.z_q.new_zeros(self.batch_shape)


def _distributed() -> bool:
    """Whether this process is one of several DDP ranks (a process group of more than one)."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


class VectorQuantizer(Family, nn.Module):
    """The VQ-VAE's quantizer as a posterior family: K = ``codes`` codebook vectors of
    ``code_dim`` D; the encoder's ``latent`` outputs are z_e, P = latent / D vectors. With
    ``ema`` the codebook is a buffer updated by moving averages (``decay`` gamma, Laplace
    smoothing ``epsilon``); without, a parameter trained by the objective's codebook loss.
    ``init``: the codebook's start, from the first training minibatch or U(-1/K, 1/K)."""

    # No reparameterized density over a continuum: only the VQ-VAE's objective trains it
    # (objectives.vq_vae), and priors.codes or a fitted prior over codes scores it.
    features: frozenset[str] = frozenset()

    @checked
    def __init__(self, codes: PositiveInt = 512, code_dim: PositiveInt = 64, ema: bool = False,
                 decay: Decay = 0.99, epsilon: PositiveFloat = 1e-5,
                 init: Literal["data", "uniform"] = "data") -> None:
        nn.Module.__init__(self)
        self.codes, self.code_dim, self.ema = codes, code_dim, ema
        self.decay, self.epsilon, self.init = decay, epsilon, init
        # Whether the codebook has its start (always, for init="uniform"); saved in checkpoints.
        self.register_buffer("initialised", torch.tensor(init == "uniform"))
        init = torch.empty(codes, code_dim).uniform_(-1.0 / codes, 1.0 / codes)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.ones(codes))  # N_k
            self.register_buffer("embedding_sum", init.clone())  # m_k
        else:
            self.codebook = nn.Parameter(init)

    def n_params(self, latent: int) -> int:
        if latent % self.code_dim:  # a ValueError: the network's build would name it as its own
            raise ValueError(f"model.encoder.posterior.code_dim={self.code_dim} must divide "
                             f"model.latent={latent}: z is a map of latent / code_dim vectors")
        return latent

    def positions(self, latent: int) -> int:
        """P, the number of vectors in a latent vector of size ``latent``."""
        return latent // self.code_dim

    def nearest(self, vectors: Tensor) -> Tensor:
        """The code of each vector [..., D]: argmin_k ||v - e_k||^2."""
        e = self.codebook.detach()
        distances = (vectors.pow(2).sum(-1, keepdim=True) - 2 * vectors @ e.T
                     + e.pow(2).sum(-1))
        return distances.argmin(-1)

    def lookup(self, codes: Tensor) -> Tensor:
        """z for a code map [..., P]: the codebook vectors, laid out as ``as_latent``."""
        return as_latent(F.embedding(codes, self.codebook))

    def __call__(self, params: Tensor) -> Quantized:
        # The codes and the moving averages in float32, outside autocast: under mixed precision
        # (trainer.precision=bf16-mixed) autocast ran the distances' matmul v @ e.T in bfloat16,
        # whose 8-bit term cancelled against the others: a quarter of the vectors of a 2-d
        # codebook of 512 went to another code than their nearest (84 % with code_dim=1).
        vectors = as_map(params.detach().float(), self.code_dim)
        exact = torch.autocast(params.device.type, enabled=False)
        training = self.training and torch.is_grad_enabled()
        if training and not self.initialised:
            with exact:
                self.start(vectors.reshape(-1, self.code_dim))
        with torch.no_grad(), exact:
            codes = self.nearest(vectors)
        z_q = self.lookup(codes)  # with the codebook as it was before this step's update
        if self.ema and training:
            with exact:
                self.update(vectors.reshape(-1, self.code_dim), codes.reshape(-1))
        return Quantized(params, z_q, codes)

    @torch.no_grad()
    def start(self, vectors: Tensor) -> None:
        """The data-dependent start: K of ``vectors`` [N, D], drawn at random."""
        chosen = vectors[torch.randint(len(vectors), (self.codes,), device=vectors.device)
                         if len(vectors) < self.codes
                         else torch.randperm(len(vectors), device=vectors.device)[:self.codes]]
        if _distributed():  # every rank drew from its own minibatch: rank 0's for all
            torch.distributed.broadcast(chosen, 0)
        self.codebook.copy_(chosen)
        if self.ema:
            self.embedding_sum.copy_(chosen)
            self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(self, vectors: Tensor, codes: Tensor) -> None:
        """One step of the moving averages (module docstring) from ``vectors`` [N, D] and their
        ``codes`` [N]."""
        one_hot = F.one_hot(codes, self.codes).to(vectors.dtype)
        counts, sums = one_hot.sum(0), one_hot.T @ vectors
        if _distributed():  # the global batch's, on every rank
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embedding_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.codes * self.epsilon) * n
        self.codebook.copy_(self.embedding_sum / smoothed.unsqueeze(-1))

    def location(self, q: Distribution) -> Tensor:
        return q.mean

    def stddev(self, q: Distribution) -> Tensor:
        return q.stddev

    def log_uniform(self, latent: int) -> float:
        """log p(k) of one code map under the uniform prior over codes: -P log K."""
        return -self.positions(latent) * math.log(self.codes)

    def __repr__(self) -> str:
        return (f"VectorQuantizer(codes={self.codes}, code_dim={self.code_dim}, ema={self.ema}, "
                f"decay={self.decay}, epsilon={self.epsilon}, init={self.init!r})")
