"""Priors: densities normalised and equal to their mixture formulas; learnable parts get
gradients through the VAE loss; the VampPrior shares, but does not own, the encoder; the KL to
a prior is analytic exactly where torch.distributions has it in closed form."""

import math
from functools import partial

import pytest
import torch
from models import small_vae
from torch.distributions import Normal, kl_divergence
from torch.testing import assert_close

from vae_lightning.nets import MLP
from vae_lightning.objectives import closed_form_kl
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.posteriors import Encoder, Gaussian
from vae_lightning.priors import MixtureOfGaussians, StandardNormal, VampPrior

LATENT, DATA_SHAPE = 3, (1, 2, 3)  # 6 pixels


def _encoder(latent=LATENT, data_shape=DATA_SHAPE):
    return Encoder(partial(MLP, hidden=(8,)), Gaussian(), data_shape, latent)


def _vamp(latent=LATENT, k=4):
    encoder = _encoder(latent)
    prior = VampPrior(latent, DATA_SHAPE, n_components=k)
    prior.bind(encoder)
    return prior, encoder


def test_mog_log_prob_is_the_mixture_formula_and_samples_have_the_mixture_mean():
    torch.manual_seed(0)
    prior = MixtureOfGaussians(LATENT, n_components=4, init_spread=2.0)
    with torch.no_grad():
        prior.logits.normal_()
        prior.log_scale.normal_(0.0, 0.3)
    z = torch.randn(5, LATENT)
    comp = Normal(prior.loc, prior.log_scale.exp()).log_prob(z[:, None]).sum(-1)  # [5, K]
    want = torch.logsumexp(prior.logits.log_softmax(0) + comp, dim=-1)
    assert_close(prior.log_prob(z), want)
    samples = prior.sample(100_000)
    assert samples.shape == (100_000, LATENT)
    mean = (prior.logits.softmax(0)[:, None] * prior.loc).sum(0)
    assert_close(samples.mean(0), mean, atol=0.05, rtol=0)


def test_vamp_log_prob_is_the_average_of_the_encoder_posteriors_at_the_pseudo_inputs():
    prior, encoder = _vamp()
    assert prior.pseudo_inputs.shape == (4, *DATA_SHAPE)
    z = torch.randn(5, LATENT)
    q = encoder(prior.pseudo_inputs)  # batch [K]
    want = torch.logsumexp(q.log_prob(z[:, None]), dim=-1) - math.log(4)
    assert_close(prior.log_prob(z), want)
    assert prior.sample(7).shape == (7, LATENT)


def test_vamp_prior_needs_its_encoder_bound():
    with pytest.raises(RuntimeError, match="bind"):
        VampPrior(LATENT, DATA_SHAPE, n_components=4).distribution()


def test_vamp_pseudo_inputs_start_in_the_data_range():
    prior = VampPrior(LATENT, (1, 28, 28), n_components=50)
    assert 0.0 < prior.pseudo_inputs.min() and prior.pseudo_inputs.max() < 1.0
    assert abs(prior.pseudo_inputs.mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("make", [lambda: _vamp(latent=1)[0],
                                  lambda: MixtureOfGaussians(1, n_components=3)])
def test_one_dimensional_prior_density_integrates_to_one(make):
    torch.manual_seed(0)
    z = torch.linspace(-30, 30, 60001)[:, None]
    density = make().log_prob(z).exp().double()
    assert torch.trapezoid(density, z[:, 0].double()).item() == pytest.approx(1.0, abs=1e-4)


def test_vamp_prior_does_not_own_the_encoder():
    vae = small_vae(DATA_SHAPE, LATENT, prior=VampPrior)
    assert vae.prior._encoder[0] is vae.encoder
    assert [name for name, _ in vae.prior.named_parameters()] == ["pseudo_inputs"]
    assert list(vae.prior.state_dict()) == ["pseudo_inputs"]
    assert len(list(vae.parameters())) == len({id(p) for p in vae.parameters()})


@pytest.mark.parametrize("prior, names", [
    (VampPrior, ["pseudo_inputs"]),
    (MixtureOfGaussians, ["logits", "loc", "log_scale"]),
])
def test_learnable_prior_parameters_receive_gradients_from_the_loss(prior, names):
    torch.manual_seed(0)
    vae = small_vae(DATA_SHAPE, LATENT, prior=prior)
    x = torch.rand(16, *DATA_SHAPE).round()
    (-vae.bound(x).elbo.mean()).backward()
    for name in names:
        grad = getattr(vae.prior, name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("prior", [MixtureOfGaussians, VampPrior])
def test_no_closed_form_kl_to_a_mixture_prior_and_analytic_kl_is_rejected(prior):
    torch.manual_seed(0)
    vae = small_vae(DATA_SHAPE, LATENT, prior=prior)
    q = vae.encoder(torch.rand(5, *DATA_SHAPE))
    assert closed_form_kl(q, vae.prior.distribution()) is None
    with pytest.raises(ValueError, match="kl='analytic'"):
        small_vae(DATA_SHAPE, LATENT, prior=prior, objective=ELBO(kl="analytic"))


def test_analytic_kl_is_accepted_for_the_standard_normal_prior():
    torch.manual_seed(0)
    vae = small_vae(DATA_SHAPE, LATENT, prior=StandardNormal, objective=ELBO(kl="analytic"))
    q = vae.encoder(torch.rand(5, *DATA_SHAPE))
    p = vae.prior.distribution()
    assert torch.equal(closed_form_kl(q, p), kl_divergence(q, p))


@pytest.mark.parametrize("prior", [MixtureOfGaussians, VampPrior])
def test_auto_kl_to_a_mixture_prior_is_estimator_a(prior):
    """ELBO(kl="auto") falls back to the Monte-Carlo KL, the mean over the samples of
    log q(z|x) - log p(z), and the reconstruction of the same samples."""
    torch.manual_seed(0)
    vae = small_vae(DATA_SHAPE, LATENT, prior=prior, objective=ELBO(n_samples=3, kl="auto"))
    x = torch.rand(5, *DATA_SHAPE).round()
    torch.manual_seed(4)
    bound = vae.bound(x)
    torch.manual_seed(4)
    q, p = vae.encoder(x), vae.prior.distribution()
    z = q.rsample((3,))
    assert_close(bound.kl, (q.log_prob(z) - p.log_prob(z)).mean(0))
    assert_close(bound.recon, vae.decoder(z).log_prob(x).mean(0))


def test_a_mixture_of_diagonal_gaussians_scores_by_matrix_products_as_torch_does():
    """priors.DiagonalGaussianMixture (the mixture and VampPrior priors with Gaussian
    components) gives torch's MixtureSameFamily density and gradients, from its [N, d] x [d, K]
    expansion in double precision; other component families keep torch's mixture."""
    from torch.distributions import Categorical, Independent, Laplace, MixtureSameFamily, Normal

    from vae_lightning.priors import DiagonalGaussianMixture, mixture

    g = torch.Generator().manual_seed(0)
    loc = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (0.05 + torch.rand(9, 4, generator=g, dtype=torch.float64)).requires_grad_()
    logits = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    weights = Categorical(logits=logits)
    fast = mixture(weights, Independent(Normal(loc, scale), 1))
    slow = MixtureSameFamily(weights, Independent(Normal(loc, scale), 1))
    assert isinstance(fast, DiagonalGaussianMixture)
    z = 3 * torch.randn(6, 5, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fast.log_prob(z), slow.log_prob(z), rtol=1e-10, atol=1e-10)
    def gradients(kind):
        built = kind(Categorical(logits=logits), Independent(Normal(loc, scale), 1))
        return torch.autograd.grad(built.log_prob(z).sum(), (loc, scale, logits))

    for ours, theirs in zip(gradients(mixture), gradients(MixtureSameFamily)):
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)
    assert type(mixture(weights, Independent(Laplace(loc, scale), 1))) is MixtureSameFamily


def test_parts_of_one_s_own_that_lack_what_the_model_calls_are_refused_when_composed():
    """A prior without distribution() (it gave a bare NotImplementedError at the first
    validation) and a posterior family that is not a Family (AttributeError 'bind'): one line
    each when the model is built, naming the key and what to define."""
    import functools

    from torch import nn

    from vae_lightning.likelihoods import Bernoulli, Decoder
    from vae_lightning.module import VAE
    from vae_lightning.nets import MLP
    from vae_lightning.objectives.elbo import ELBO
    from vae_lightning.posteriors import Encoder, Gaussian
    from vae_lightning.priors import Prior, StandardNormal

    class OnlyLogProb(Prior):
        def log_prob(self, z):
            return -0.5 * (z ** 2).sum(-1)

    class NotAFamily(nn.Module):
        def n_params(self, latent):
            return 2 * latent

        def __call__(self, params):
            return None

    net = functools.partial(MLP, hidden=[8])
    decoder = Decoder(likelihood=Bernoulli(), latent=2, data_shape=[1, 4, 4], net=net)
    encoder = Encoder(posterior=Gaussian(), latent=2, data_shape=[1, 4, 4], net=net)
    with pytest.raises(ValueError, match=r"model.prior: .*OnlyLogProb does not define "
                                         r"distribution\(\)"):
        VAE(encoder, decoder, OnlyLogProb(2), ELBO())
    VAE(encoder, decoder, StandardNormal(2), ELBO())  # the shipped parts pass
    with pytest.raises(ValueError, match=r"model.encoder.posterior: .*NotAFamily does not define "
                                         r"location, bind, informative, features: .* subclasses "
                                         r"vae_lightning.posteriors.Family"):
        Encoder(posterior=NotAFamily(), latent=2, data_shape=[1, 4, 4], net=net)


def test_a_flow_family_of_one_s_own_without_a_location_is_refused_when_composed():
    """A posterior family whose q is a TransformedDistribution (no mean in closed form) and
    that keeps Family.location (q's mean) trained to its end, then failed with a traceback
    drawing latents.png (no results.json); one that defines location(q) only ended vae-encode in
    a traceback (Family.stddev asked q.stddev). Refused when composed; stddev is None."""
    import functools

    from torch.distributions import AffineTransform, Independent, Normal, TransformedDistribution

    from vae_lightning.nets import MLP
    from vae_lightning.posteriors import Encoder, Family

    class Shifted(Family):
        features = frozenset({"rsample", "density", "factorized", "finite_variance"})

        def n_params(self, latent):
            return latent

        def __call__(self, params):
            base = Independent(Normal(torch.zeros_like(params), torch.ones_like(params)), 1)
            return TransformedDistribution(base, [AffineTransform(params, 2.0, event_dim=1)])

    class Located(Shifted):
        def location(self, q):
            return q.transforms[0](q.base_dist.mean)

    net = functools.partial(MLP, hidden=[8])
    with pytest.raises(ValueError, match=r"model.encoder.posterior: .*Shifted's q\(z\|x\) "
                                         r"\(TransformedDistribution\) has no mean .* define "
                                         r"location\(q\)"):
        Encoder(posterior=Shifted(), latent=2, data_shape=[1, 4, 4], net=net)
    encoder = Encoder(posterior=Located(), latent=2, data_shape=[1, 4, 4], net=net)
    q = encoder(torch.rand(3, 1, 4, 4))
    assert encoder.posterior.stddev(q) is None
    torch.testing.assert_close(encoder.location(q), q.transforms[0].loc)  # the base's mean, 0
