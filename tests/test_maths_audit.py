"""Independent checks from a maths audit: properties that the papers derive the code's values
from, where the modules' own tests pin the values, checked here by brute force or closed
form."""

import itertools
import math

import pytest
import torch

from vae_lightning.objectives.beta_tc import log_weights


@pytest.mark.parametrize("i", [0, 1, 3])
def test_mss_weights_give_an_unbiased_estimate_of_the_aggregate_posterior(i):
    """Chen et al. 2018, App. C.2: for z_i ~ q(z|x_i) and the other M - 1 points of the
    minibatch drawn without replacement from the other N - 1, sum_m w_im q(z_i|x_m) has
    expectation q(z_i) = (1/N) sum_n q(z_i|x_n) exactly. Enumerated over every ordered choice
    of the other points (N = 6, M = 4: 60 minibatches), with the point at position ``i``; MWS
    (weights 1/M) is biased at this size, so the check tells the two apart."""
    n, m = 6, 4
    density = torch.tensor([0.7, 0.05, 1.9, 0.3, 0.01, 1.2], dtype=torch.float64)  # q(z_i|x_n)
    exact = density.mean()
    own = 2  # the index of x_i among the N points
    others = [k for k in range(n) if k != own]
    for estimator, unbiased in (("mss", True), ("mws", False)):
        w = log_weights(m, estimator, n).double().exp()[i]
        total, count = 0.0, 0
        for chosen in itertools.permutations(others, m - 1):
            batch = list(chosen[:i]) + [own] + list(chosen[i:])
            total += float((w * density[batch]).sum())
            count += 1
        assert count == math.perm(n - 1, m - 1)
        mean = total / count
        if unbiased:
            assert mean == pytest.approx(float(exact), rel=1e-6)  # the weights are float32
        else:
            assert abs(mean - float(exact)) > 0.05
