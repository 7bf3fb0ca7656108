"""The maximum mean discrepancy (Gretton et al. 2012) between samples, for InfoVAE's MMD-VAE and
WAE-MMD: with a kernel k,

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),  x, x' ~ P, y, y' ~ Q,

estimated without bias (the U-statistic, Gretton et al.'s Lemma 6; the WAE paper's Algorithm 2)
from x_1..x_n ~ P and y_1..y_m ~ Q:

    1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
        - 2/(nm) sum_{i, j} k(x_i, y_j).

Kernels, with bandwidth C: ``rbf``, k(x, y) = exp(-||x - y||^2 / C); ``imq``, the inverse
multiquadratic k(x, y) = C / (C + ||x - y||^2). The WAE paper's choice is C = 2 d sigma_z^2 for
d latent dimensions and a prior of variance sigma_z^2 per dimension: ``default_bandwidth``
(sigma_z = 1, the standard normal prior)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vae_lightning.errors import ConfigError

Kernel = Literal["rbf", "imq"]


def default_bandwidth(latent: int) -> float:
    """C = 2 d sigma_z^2 with sigma_z^2 = 1 (Tolstikhin et al. 2018, Sec. 4)."""
    return 2.0 * latent


def kernel_matrix(x: Tensor, y: Tensor, kernel: Kernel, bandwidth: float) -> Tensor:
    """k(x_i, y_j), ``[n, m]``, for rows x ``[n, d]`` and y ``[m, d]``."""
    distances = (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)  # smooth at x = y, unlike cdist
    if kernel == "rbf":
        return torch.exp(-distances / bandwidth)
    return bandwidth / (bandwidth + distances)


def mmd2(x: Tensor, y: Tensor, kernel: Kernel, bandwidth: float) -> Tensor:
    """The unbiased estimate of MMD^2 between the distributions of the rows of ``x`` and of
    ``y`` (each at least two rows: one row has no pairs, and the estimate no value)."""
    n, m = len(x), len(y)
    if min(n, m) < 2:  # refused before training (Objective.min_batch); a last resort here
        raise ConfigError(
            f"The MMD of InfoVAE and WAE is estimated from pairs of a minibatch's points, and "
            f"this training minibatch holds {min(n, m)}: choose a data.batch_size of at least "
            "2 that leaves no point or at least two over after an epoch's last full minibatch.")
    k_xx, k_yy = kernel_matrix(x, x, kernel, bandwidth), kernel_matrix(y, y, kernel, bandwidth)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * kernel_matrix(x, y, kernel, bandwidth).mean()
