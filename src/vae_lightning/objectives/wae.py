"""The Wasserstein autoencoder with the MMD penalty, WAE-MMD (Tolstikhin, Bousquet, Gelly &
Schoelkopf 2018, Algorithm 2): minimise

    (1/M) sum_m c(x_m, G(z~_m)) + lambda MMD^2(q(z), p(z)),   z~_m ~ Q(z|x_m),

the reconstruction cost plus the unbiased MMD^2 estimate (``mmd``) between the minibatch's codes
z~ and as many samples of the prior. The cost is -log p(x|z), the decoder's negative
log-likelihood (with a Gaussian of variance 1/2, ``model/likelihood=gaussian_fixed``, sigma =
sqrt(0.5), it is the paper's squared error ||x - G(z)||^2 up to a constant). ``deterministic``
takes the encoder's location as z~ (the paper's deterministic encoder); otherwise z~ is a
reparameterized sample of q(z|x). The paper's kernel is the inverse multiquadratic with
C = 2 d sigma_z^2 (``bandwidth`` null).

The WAE bounds no likelihood; the bound logged is the ELBO of the same encoder and decoder, with
q(z|x)'s full distribution (under a deterministic encoder its scale is not trained), so that runs
stay comparable in nats."""

from __future__ import annotations

from torch import Tensor

from vae_lightning.args import PositiveFloat, checked
from vae_lightning.parts import Bound, Parts

from .base import Objective
from .mmd import Kernel, default_bandwidth, mmd2
from .regularized import Regularized, sample_bound


class WAE(Regularized, Objective):
    """WAE-MMD with weight ``lam`` (the paper's lambda), the ``kernel`` (``imq`` or ``rbf``) and
    its ``bandwidth`` C (null: 2 x latent), and a ``deterministic`` encoder. Logs
    ``train/mmd``, the MMD^2 estimate, and ``train/cost``, the reconstruction cost."""

    min_batch = 2  # the MMD^2 estimate's pairs of points (mmd.mmd2)
    checkpoint = "last"  # the WAE objective, not the ELBO, is trained

    @checked
    def __init__(self, lam: PositiveFloat = 10.0, kernel: Kernel = "imq",
                 bandwidth: PositiveFloat | None = None, deterministic: bool = True) -> None:
        self.lam, self.kernel, self.bandwidth = lam, kernel, bandwidth
        self.deterministic = deterministic

    def loss(self, model: Parts, x: Tensor) -> tuple[Tensor, Bound]:
        z, q, _, bound = sample_bound(model, x)
        cost = -bound.recon
        if self.deterministic:
            z = model.encoder.location(q)
            cost = -model.decoder(z).log_prob(x)
        bandwidth = self.bandwidth or default_bandwidth(z.shape[-1])
        mmd = mmd2(z, model.prior.sample(len(z)), self.kernel, bandwidth)
        self.report(mmd=mmd, cost=cost)
        return cost.mean() + self.lam * mmd, bound
