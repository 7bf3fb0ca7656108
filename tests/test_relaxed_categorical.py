"""Relaxed categorical latents (posteriors.relaxed_categorical, priors.categorical): the Concrete
density against Maddison et al.'s closed form, the analytic KL to the uniform categorical
against Monte Carlo, the importance-weighted estimate with discrete latents against enumeration,
the temperature schedule, the joint layout, and a few hundred steps on MNIST."""

import math
from types import SimpleNamespace

import pytest
import torch
from compose import SHARED_DATA, short_mnist_run
from torch.distributions import Bernoulli, Independent, RelaxedOneHotCategorical, kl_divergence

from vae_lightning.args import ArgumentError
from vae_lightning.objectives.base import iw_bound
from vae_lightning.posteriors.relaxed_categorical import RelaxedCategorical
from vae_lightning.priors.categorical import UniformCategorical, uniform_kl


def concrete_log_density(z, probs, tau):
    """Maddison et al. 2017, eq. 1 (Jang et al. eq. 3), written out:
    log[(K-1)! tau^(K-1) prod_k pi_k z_k^(-tau-1) / (sum_i pi_i z_i^-tau)^K]."""
    k = len(probs)
    return (math.log(math.factorial(k - 1)) + (k - 1) * math.log(tau)
            + sum(math.log(probs[i]) - (tau + 1) * math.log(z[i]) for i in range(k))
            - k * math.log(sum(probs[i] * z[i] ** -tau for i in range(k))))


def model(latent, continuous=0, categories=3):
    family = RelaxedCategorical(categories=categories, continuous=continuous,
                                temperature=1.0, temperature_min=0.5, anneal_rate=0.1)
    prior = UniformCategorical(latent)
    prior.bind(SimpleNamespace(posterior=family))
    return family, prior


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_the_concrete_density_is_maddison_et_al_s_closed_form(tau):
    probs = [0.2, 0.5, 0.3]
    z = [0.1, 0.6, 0.3]
    q = RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64),
                                 probs=torch.tensor(probs, dtype=torch.float64))
    assert q.log_prob(torch.tensor(z, dtype=torch.float64)).item() == pytest.approx(
        concrete_log_density(z, probs, tau), abs=1e-10)


def test_the_kl_to_the_uniform_categorical_is_sum_q_log_q_plus_log_k():
    torch.manual_seed(0)
    family, prior = model(6)  # two blocks of 3
    family.eval()
    params = torch.randn(4, family.n_params(6))
    q, p = family(params), prior.distribution()
    analytic = kl_divergence(q, p)
    logits = params.unflatten(-1, (2, 3))
    assert torch.allclose(analytic, uniform_kl(logits).sum(-1), atol=1e-6)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(mc, analytic, atol=0.01)
    assert (analytic >= 0).all()


def test_the_joint_kl_adds_the_gaussian_kl_and_draws_lie_on_the_layout():
    torch.manual_seed(0)
    family, prior = model(5, continuous=2)  # 2 Gaussian dims and one block of 3
    params = torch.randn(3, family.n_params(5))  # 4 Gaussian parameters and 3 logits
    assert params.shape[-1] == 7
    q = family(params)
    z = q.rsample()
    assert z.shape == (3, 5) and torch.allclose(z[:, 2:].sum(-1), torch.ones(3))
    family.eval()
    q, p = family(params), prior.distribution()
    gaussian = family.gaussian(params[:, :4])
    expected = kl_divergence(gaussian, prior.normal()) + uniform_kl(params[:, 4:])
    assert torch.allclose(kl_divergence(q, p), expected, atol=1e-6)
    assert set(q.sample()[:, 2:].unique().tolist()) <= {0.0, 1.0}


def test_the_iw_estimate_with_discrete_latents_tends_to_the_enumerated_log_p_of_x():
    """One block of K = 4, p(x|c) Bernoulli: log p(x) = log sum_c p(x|c) / K exactly; E_q[w] is
    p(x) (enumerated over c), and log (1/k) sum w_i tends to log p(x) as k grows."""
    torch.manual_seed(0)
    family, prior = model(4, categories=4)
    family.eval()
    weights = torch.randn(4, 6)  # row c: the logits of p(x|c) over 6 pixels

    def decoder(z):
        return Independent(Bernoulli(logits=z @ weights), 1)

    x = torch.tensor([[1.0, 0, 1, 1, 0, 0]])
    codes = torch.eye(4)
    log_p_x = torch.logsumexp(decoder(codes).log_prob(x) - math.log(4), 0)
    q, p = family(torch.randn(1, 4)), prior.distribution()
    log_w = decoder(codes).log_prob(x) + p.log_prob(codes) - q.log_prob(codes.unsqueeze(1))[:, 0]
    q_c = q.log_prob(codes.unsqueeze(1))[:, 0].exp()
    assert torch.allclose((q_c * log_w.exp()).sum().log(), log_p_x, atol=1e-6)
    estimates = []
    for k in (1, 10, 10_000):
        z = q.sample((k,))
        log_w = decoder(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)
        estimates.append(iw_bound(log_w).item())
    assert estimates[-1] == pytest.approx(log_p_x.item(), abs=0.01)
    assert estimates[0] <= log_p_x.item() + 1e-6


def test_the_temperature_anneals_with_the_step_to_its_floor():
    family, _ = model(3)
    assert family.tau() == 1.0
    family.at_step(1)
    assert family.tau() == pytest.approx(math.exp(-0.1))
    family.at_step(100)
    assert family.tau() == 0.5


def test_the_temperature_follows_the_model_s_optimizer_step_not_its_forward_passes():
    """tau_t at the loss of step t = 0, 1, ... (the KL schedules' clock), with extra encoder
    passes in training mode between the steps (a callback's probe) counting for nothing."""
    import lightning as L
    from models import binary_images, small_vae
    from torch.utils.data import DataLoader, TensorDataset

    family, prior = model(6)
    vae = small_vae(latent=6, posterior=family, prior=prior)
    seen, loss = [], vae.objective.loss

    def recorded(parts, x):
        seen.append(family.tau())
        return loss(parts, x)

    vae.objective.loss = recorded

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            module.encoder(batch[0])  # in training mode, with gradients

    x = binary_images(48)
    L.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[Probe()]).fit(
        vae, DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=8))
    assert seen == pytest.approx([max(0.5, math.exp(-0.1 * t)) for t in range(5)])


def test_a_latent_that_is_not_whole_blocks_is_refused_with_the_keys():
    with pytest.raises(ValueError, match="model.latent=7.*categories=3"):
        RelaxedCategorical(categories=3, continuous=2).n_params(7)
    with pytest.raises(ArgumentError, match="categories"):
        RelaxedCategorical(categories=1)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(),
                    reason="needs ../shared/data/mnist (the shared data folder)")
def test_the_gumbel_preset_trains_on_mnist(tmp_path):
    """Jang et al.'s 30 x 10 categorical VAE, 300 steps on MNIST: the loss falls and the
    evaluation bound over discrete codes is finite."""

    rows = short_mnist_run(["experiment=gumbel_mnist", "callbacks.figures=null"], tmp_path)
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert losses[-1] < losses[0] - 50
    test = [r for r in rows if r.get("test/elbo")][-1]
    assert math.isfinite(float(test["test/elbo"]))


def test_a_captured_cuda_graph_is_refused_with_an_annealed_temperature():
    from models import small_vae

    family, prior = model(6)
    with pytest.raises(ValueError, match="cuda_graph=true.*follows the optimizer step"):
        small_vae(latent=6, posterior=family, prior=prior, cuda_graph=True)


@pytest.mark.parametrize("training", [True, False])
def test_an_empty_batch_is_an_empty_distribution(training):
    """encode / reconstruct of no images (the Python API) give an empty q, as a Gaussian's: torch
    cannot build its categoricals on zero logits."""
    family = RelaxedCategorical(categories=3, continuous=2).train(training)
    q = family(torch.zeros(0, family.n_params(8)))
    assert q.batch_shape == (0,) and q.rsample().shape == (0, 8)
    assert q.sample().shape == (0, 8) and family.location(q).shape == (0, 8)
    one = family(torch.zeros(1, family.n_params(8)))  # one point's is unchanged
    assert one.batch_shape == (1,) and family.location(one).shape == (1, 8)
