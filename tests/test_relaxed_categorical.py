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


def _exp_concrete_log_density(y, logits, tau):
    """log p(z) of z = exp(y) in float64 from y itself (Maddison et al. 2017, eq. 1 with
    log z = y): log (K-1)! + (K-1) log tau + sum_k (log pi_k - (tau + 1) y_k)
    - K logsumexp_i (log pi_i - tau y_i)."""
    y, log_pi = y.double(), torch.log_softmax(logits.double(), -1)
    k = y.shape[-1]
    return (math.lgamma(k) + (k - 1) * math.log(tau) + (log_pi - (tau + 1) * y).sum(-1)
            - k * torch.logsumexp(log_pi - tau * y, -1))


def test_a_relaxed_draw_below_float32_s_range_is_scored_from_its_log_values():
    """A confident block at tau = 0.5: its draws' smaller z_k are exactly 0 in float32, where
    log z_k = -inf made log q(z) and log p(z) NaN. Drawn and scored in log space (the
    ExpConcrete) both are finite and equal Maddison et al.'s density at z = exp(y), in float64;
    draws as before (the same random numbers give the same z)."""
    family, prior = model(7, continuous=1)  # one Gaussian dimension, two blocks of 3
    family.at_step(100)  # tau at its floor, 0.5
    params = torch.tensor([[0.3, -0.2, 0.0, -150.0, -300.0, 0.0, 80.0, -80.0]] * 4,
                          requires_grad=True)
    q, p = family(params), prior.distribution()
    torch.manual_seed(0)
    z = q.rsample((5,))
    assert (z[..., 1:] == 0).any()  # underflowed
    log_q, log_p = q.log_prob(z), p.log_prob(z)
    assert torch.isfinite(log_q).all() and torch.isfinite(log_p).all()
    torch.manual_seed(0)
    q.parts[0].rsample((5,))  # the Gaussian part's draw comes first
    y = q.parts[1].rsample_log((5,))  # the same draw, in log space
    blocks = params[:, 2:].detach().unflatten(-1, (2, 3))
    gaussian = q.parts[0].log_prob(z[..., :1]).double()
    expected_q = gaussian + _exp_concrete_log_density(y, blocks, 0.5).sum(-1)
    expected_p = (p.parts[0].log_prob(z[..., :1]).double()
                  + _exp_concrete_log_density(y, torch.zeros(2, 3), 0.5).sum(-1))
    torch.testing.assert_close(log_q.double(), expected_q, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(log_p.double(), expected_p, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(z[..., 1:], y.exp().flatten(-2))
    (log_q - log_p).sum().backward()
    assert torch.isfinite(params.grad).all()
    # Any other z (a copy) is scored from itself, as torch does: here -inf - (-inf).
    assert not torch.isfinite(q.log_prob(z.clone())).all()


def test_where_nothing_underflows_the_log_space_scores_are_torch_s():
    family, prior = model(6)
    params = torch.randn(8, family.n_params(6))
    q, p = family(params), prior.distribution()
    z = q.rsample((3,))
    for d in (q, p):
        torch.testing.assert_close(d.log_prob(z), d.log_prob(z.clone()), rtol=1e-4, atol=1e-4)


def test_an_iwae_step_on_confident_blocks_is_finite():
    """model=gumbel trained on the IW bound (which scores relaxed draws under q and p) with an
    encoder whose logits are 300 apart: the loss and its gradients are finite (were NaN)."""
    from models import binary_images, small_vae

    from vae_lightning.objectives.iwae import IWAE

    family, prior = model(6)
    family.at_step(100)
    vae = small_vae(latent=6, posterior=family, prior=prior, objective=IWAE(k=5))
    with torch.no_grad():
        vae.encoder.net[-1].bias.copy_(torch.tensor([0.0, -150.0, -300.0] * 2))
        vae.encoder.net[-1].weight.mul_(0.0)
    loss, bound = vae.objective.loss(vae, binary_images(8))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all()
    assert all(torch.isfinite(t.grad).all() for t in vae.parameters() if t.grad is not None)


def test_a_draw_s_log_values_are_freed_with_it_and_serve_every_draw_still_held():
    """The log values (and the encoder's graph behind them) live as long as the z they belong
    to, not until the family's next draw; an earlier draw still held is scored from its own."""
    import gc
    import weakref

    family, prior = model(6)
    params = torch.randn(4, family.n_params(6), requires_grad=True)
    q = family(params)
    first, second = q.rsample(), q.rsample()
    assert q.draws.logs(first) is not None and q.draws.logs(second) is not None
    assert q.draws.logs(first)[0] is not q.draws.logs(second)[0]
    held = weakref.ref(q.draws.logs(first)[0])
    del first
    gc.collect()
    assert held() is None
    # Another family's draws are not read as this one's.
    other, _ = model(6)
    assert other(params).draws.logs(second) is None
