"""Sylvester-flow posteriors (van den Berg, Hasenclever, Tomczak & Welling 2018): q(z|x) is a
diagonal Gaussian pushed through K maps

    f_k(z) = z + Q R h(R~ Q^T z + b),   h = tanh,

with Q a D x M matrix of orthonormal columns, R and R~ upper-triangular M x M and b in R^M. By
Sylvester's determinant identity det(I_D + A B) = det(I_M + B A) and Q^T Q = I,

    log |det df_k/dz| = sum_i log |1 + h'((R~ Q^T z + b)_i) R_ii R~_ii|,

and with R_ii, R~_ii = tanh(.) in (-1, 1) (so R_ii R~_ii > -1 >= -1 / max h') each map is
invertible (the paper's Theorem 2). Everything is amortised, as in the authors' code
(github.com/riannevdberg/sylvester-flows): mu, log sigma^2 and per map one M x M matrix whose
upper triangle gives R's and whose lower triangle, transposed, gives R~'s off-diagonal entries,
the two diagonals, b, and what Q is made of; per parametrisation of Q:

- ``OrthogonalSylvester``: Q from a D x M matrix (M = ``vectors`` <= D) by the QR decomposition
  (the paper orthogonalises by Bjorck's iteration to a tolerance; QR is exact and differentiable);
- ``HouseholderSylvester``: Q = H_1 ... H_H (M = D), H_j = I - 2 v_j v_j^T / |v_j|^2 from H =
  ``reflections`` vectors v_j;
- ``TriangularSylvester``: Q = I (M = D), alternating with the reversal permutation from map to
  map so that the triangular maps mix the dimensions both ways.

What they offer (``parts.FEATURES``): reparameterized samples and a finite second moment (a map
moves z by Q R tanh(.), bounded since |tanh| <= 1: the tails are the base's). Not a density
at any z: the maps have no closed-form inverse (samples are scored through the forward pass),
so they train with the ELBO (Monte-Carlo KL) and IWAE and are evaluated by ``vae-eval``; DReG,
wake-sleep and the VampPrior are refused when the model is composed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, Transform, constraints

from vae_lightning.args import PositiveInt, checked

from .flow import Flow


class SylvesterMap(Transform):
    """z -> z + Q R tanh(R~ Q^T z + b) for a batch of parameters: ``q`` ``[..., D, M]`` (None:
    the identity, or the reversal permutation with ``flip``), ``r``, ``r_tilde`` ``[..., M, M]``
    upper-triangular with diagonals tanh(``d1``) and tanh(``d2``), ``b`` ``[..., M]``;
    ``log_abs_det_jacobian`` by Sylvester's identity, each factor
        1 + h'(u) R_ii R~_ii = tanh(u)^2 + sech(u)^2 cosh(d1 + d2) / (cosh d1 cosh d2)
    (1 + tanh a tanh b = cosh(a + b) / (cosh a cosh b)): a sum of non-negative terms, taken in
    logs, where 1 + h' R_ii R~_ii subtracts nearly equal numbers as the diagonals saturate
    (R_ii R~_ii -> -1) near u = 0 and can give a log of 0."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, q: Tensor | None, r: Tensor, r_tilde: Tensor, b: Tensor,
                 d1: Tensor, d2: Tensor, flip: bool = False) -> None:
        super().__init__(cache_size=1)
        self.q, self.r, self.r_tilde, self.b, self.flip = q, r, r_tilde, b, flip
        self.d1, self.d2 = d1, d2

    def _to_m(self, z: Tensor) -> Tensor:
        """Q^T z, ``[..., M]``."""
        if self.q is not None:
            return (z.unsqueeze(-2) @ self.q).squeeze(-2)
        return z.flip(-1) if self.flip else z

    def _to_d(self, v: Tensor) -> Tensor:
        """Q v, ``[..., D]``."""
        if self.q is not None:
            return (v.unsqueeze(-2) @ self.q.transpose(-1, -2)).squeeze(-2)
        return v.flip(-1) if self.flip else v

    def _preactivation(self, z: Tensor) -> Tensor:
        """R~ Q^T z + b."""
        return (self._to_m(z).unsqueeze(-2) @ self.r_tilde.transpose(-1, -2)).squeeze(-2) + self.b

    def _call(self, z: Tensor) -> Tensor:
        h = torch.tanh(self._preactivation(z))
        return z + self._to_d((h.unsqueeze(-2) @ self.r.transpose(-1, -2)).squeeze(-2))

    def log_abs_det_jacobian(self, z: Tensor, y: Tensor) -> Tensor:
        u = self._preactivation(z)
        log_sech2_ratio = (_log_cosh(self.d1 + self.d2) - _log_cosh(self.d1)
                           - _log_cosh(self.d2) - 2 * _log_cosh(u))
        return torch.log(torch.tanh(u).pow(2) + log_sech2_ratio.exp()).sum(-1)


def _log_cosh(x: Tensor) -> Tensor:
    """log cosh x = |x| + log(1 + e^(-2|x|)) - log 2, without overflow."""
    return x.abs() + F.softplus(-2 * x.abs()) - math.log(2.0)


class Sylvester(Flow):
    """q(z|x) = the Gaussian base pushed through ``length`` Sylvester maps (see the module); a
    parametrisation of Q is a subclass: its ``width(latent)`` M and ``q_size(latent)`` network
    outputs per map, and ``orthogonal(raw, latent, k)`` the Q of map k from them."""

    features = frozenset({"rsample", "finite_variance"})

    @checked
    def __init__(self, length: PositiveInt = 4) -> None:
        self.length = length

    def width(self, latent: int) -> int:
        return latent

    def q_size(self, latent: int) -> int:
        return 0

    def orthogonal(self, raw: Tensor, latent: int, k: int) -> Tensor | None:
        raise NotImplementedError

    def _per_map(self, latent: int) -> int:
        m = self.width(latent)
        return m * m + 3 * m + self.q_size(latent)

    def n_params(self, latent: int) -> int:
        return 2 * latent + self.length * self._per_map(latent)

    def __call__(self, params: Tensor) -> Distribution:
        latent = self.latent_of(params)
        m = self.width(latent)
        maps = params[..., 2 * latent:].unflatten(-1, (self.length, self._per_map(latent)))
        upper = torch.ones(m, m, dtype=torch.bool, device=params.device).triu(1)
        transforms = []
        for k in range(self.length):
            full, d1, d2, b, raw = maps[..., k, :].split([m * m, m, m, m, self.q_size(latent)],
                                                         -1)
            full = full.unflatten(-1, (m, m))
            r = full * upper + torch.diag_embed(torch.tanh(d1))
            r_tilde = full.transpose(-1, -2) * upper + torch.diag_embed(torch.tanh(d2))
            transforms.append(SylvesterMap(self.orthogonal(raw, latent, k), r, r_tilde, b,
                                           d1, d2, flip=k % 2 == 1))
        return self.flow(params, latent, transforms)


class OrthogonalSylvester(Sylvester):
    """Q with M = ``vectors`` orthonormal columns, from the QR decomposition of a D x M matrix
    of network outputs."""

    @checked
    def __init__(self, length: PositiveInt = 4, vectors: PositiveInt = 8) -> None:
        super().__init__(length)
        self.vectors = vectors

    def min_latent(self) -> int:
        return self.vectors

    def width(self, latent: int) -> int:
        if self.vectors > latent:
            raise ValueError(
                f"model.encoder.posterior.vectors={self.vectors} is more than the latent size "
                f"{latent}: Q has `vectors` orthonormal columns in R^latent, so at most "
                f"{latent}. Lower vectors (or raise model.latent).")
        return self.vectors

    def q_size(self, latent: int) -> int:
        return latent * self.width(latent)

    def orthogonal(self, raw: Tensor, latent: int, k: int) -> Tensor:
        return torch.linalg.qr(raw.unflatten(-1, (latent, self.vectors)))[0]


class HouseholderSylvester(Sylvester):
    """Q = H_1 ... H_H, H = ``reflections`` Householder reflections of R^D (M = D)."""

    @checked
    def __init__(self, length: PositiveInt = 4, reflections: PositiveInt = 8) -> None:
        super().__init__(length)
        self.reflections = reflections

    def q_size(self, latent: int) -> int:
        return self.reflections * latent

    def orthogonal(self, raw: Tensor, latent: int, k: int) -> Tensor:
        v = raw.unflatten(-1, (self.reflections, latent))
        v = v / v.norm(dim=-1, keepdim=True)
        q = torch.eye(latent, dtype=raw.dtype, device=raw.device).expand(*raw.shape[:-1],
                                                                        latent, latent)
        for j in range(self.reflections):  # Q H_j = Q - 2 (Q v_j) v_j^T
            vj = v[..., j, :]
            q = q - 2 * (q @ vj.unsqueeze(-1)) * vj.unsqueeze(-2)
        return q


class TriangularSylvester(Sylvester):
    """Q = I for even maps and the reversal permutation for odd ones (M = D)."""

    def orthogonal(self, raw: Tensor, latent: int, k: int) -> None:
        return None
