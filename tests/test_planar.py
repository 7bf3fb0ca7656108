"""The planar-flow posterior (Rezende & Mohamed 2015), added as its module, YAML and these tests:
its log-density is the change of variables of its maps, it trains with every objective that can
use it and is refused in one line by those that cannot, and it is evaluated like any posterior."""

import json
import math
from functools import partial

import pytest
import torch
from compose import compose_train
from models import binary_images, small_vae
from torch.autograd.functional import jacobian

from vae_lightning.errors import ConfigError
from vae_lightning.nets import MLP
from vae_lightning.objectives import closed_form_kl
from vae_lightning.objectives.dreg import DReG
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.objectives.iwae import IWAE
from vae_lightning.objectives.wake_sleep import WakeSleep
from vae_lightning.parts import scored_sample
from vae_lightning.posteriors import Encoder
from vae_lightning.posteriors.planar import Planar
from vae_lightning.priors import MixtureOfGaussians, StandardNormal, VampPrior
from vae_lightning.train import build_run, train

LATENT = 3


def _flow(params):
    return Planar(length=2)(params)


def _params(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, Planar(length=2).n_params(LATENT), generator=g)


def test_log_q_is_the_base_density_less_the_log_jacobian_of_the_maps():
    """log q(z) against an independent change of variables: the Jacobian of the composed maps by
    autograd, its log-determinant subtracted from the base Gaussian's log-density."""
    params = _params()
    q = _flow(params)
    torch.manual_seed(1)
    z, log_q = scored_sample(q)
    torch.manual_seed(1)
    z0 = q.base_dist.rsample()
    for i in range(len(params)):
        def maps(v, i=i):
            for transform in q.transforms:
                # each map of data point i alone: its parameters are rows of the batch
                bias, u, w = (t[i] for t in transform._params)
                u_hat = u + (-1 + torch.nn.functional.softplus(u @ w) - u @ w) * w / (w @ w)
                v = v + u_hat * torch.tanh(w @ v + bias)
            return v

        det = torch.linalg.det(jacobian(maps, z0[i]))
        torch.testing.assert_close(maps(z0[i]), z[i])
        expected = q.base_dist.log_prob(z0)[i] - det.abs().log()
        torch.testing.assert_close(log_q[i], expected, rtol=1e-5, atol=1e-5)


def test_the_log_determinant_stays_finite_where_a_map_nears_its_limit():
    """A map with w . u = -80 (softplus -> 0: w . u_hat = -1 to float32) at a point where
    w . z + b = 0: 1 + u_hat . psi = h^2 + (1 - h^2) softplus(w . u) = softplus(-80), log -80;
    Pyro's own form cancels to log 0 = -inf there, and agrees with ours elsewhere."""
    from pyro.distributions.transforms.planar import ConditionedPlanar

    from vae_lightning.posteriors.planar import _planar_map

    w = torch.tensor([[1.0, 0.0, 0.0]])
    u = torch.tensor([[-80.0, 0.0, 0.0]])
    z = torch.tensor([[0.0, 0.3, -0.2], [0.7, 0.3, -0.2]])  # h = 0, then h = tanh(0.7)
    ours, pyro = _planar_map()((torch.zeros(2, 1), u, w)), ConditionedPlanar((torch.zeros(2, 1),
                                                                             u, w))
    y, log_det = ours(z), ours.log_abs_det_jacobian(z, None)
    torch.testing.assert_close(y, pyro(z))  # the same map
    assert log_det[0].item() == pytest.approx(-80.0, abs=1e-3)
    assert pyro.log_abs_det_jacobian(z, None)[0].item() == -math.inf
    h = math.tanh(0.7)
    assert log_det[1].item() == pytest.approx(math.log(h * h), rel=1e-5)
    params = _params()
    for q in (_flow(params),):
        for transform in q.transforms:
            x = torch.randn(len(params), LATENT)
            bias, u, w = transform._params
            reference = ConditionedPlanar((bias, u, w))
            reference(x)
            transform(x)
            torch.testing.assert_close(transform._cached_logDetJ, reference._cached_logDetJ,
                                       rtol=1e-5, atol=1e-6)


def test_its_density_is_normalised():
    """E_q[p(z) / q(z)] = integral of p = 1 for any normalised p when log q is q's exact
    log-density: the Monte-Carlo average of the ratio to N(0, I) over 400,000 draws of a flow
    with broad maps (a base wider than p keeps the ratio bounded)."""
    params = _params(batch=3)
    params[:, :LATENT] = 0.0
    params[:, LATENT:2 * LATENT] = math.log(2.0)  # base variance 2
    q = _flow(params)
    p = StandardNormal(LATENT).distribution()
    torch.manual_seed(0)
    z, log_q = scored_sample(q, (400000,))
    ratio = (p.log_prob(z) - log_q).exp()
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(len(ratio))
    assert torch.all((mean - 1).abs() < 5 * se + 1e-3), (mean, se)
    assert closed_form_kl(q, p) is None  # no closed form for the flow: the ELBO takes MC


@pytest.mark.parametrize("objective", [ELBO(), ELBO(n_samples=3), IWAE(5)], ids=repr)
def test_it_trains_with_the_elbo_and_iwae(objective):
    torch.manual_seed(0)
    model = small_vae(latent=2, hidden=(32,), posterior=Planar(length=3), objective=objective)
    x = binary_images(256)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    # 100 steps: over seeds 0-3 the drop is 1.3-2.8 for each objective, as after 150 steps.
    for _ in range(100):
        loss, bound = model.objective.loss(model, x[torch.randint(len(x), (64,))])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 1.0 and torch.isfinite(bound.elbo).all()


@pytest.mark.parametrize("parts, words", [
    ({"objective": DReG(3)}, ["DReG", "density", "Planar"]),
    ({"objective": WakeSleep()}, ["WakeSleep", "density"]),
    ({"prior": VampPrior}, ["VampPrior", "density"]),
    ({"objective": ELBO(kl="analytic")}, ["kl='analytic'", "closed form"]),
])
def test_what_cannot_work_with_it_is_refused_when_composed(parts, words):
    with pytest.raises(ValueError) as err:
        small_vae(posterior=Planar(), **parts)
    for word in words:
        assert word in str(err.value)


def test_it_works_under_a_mixture_prior():
    model = small_vae(posterior=Planar(), prior=MixtureOfGaussians)
    loss, bound = model.objective.loss(model, binary_images(8))
    assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all()


def test_predict_step_gives_its_location_and_no_closed_form_spread():
    model = small_vae(posterior=Planar())
    out = model.predict_step((binary_images(5), None), 0)
    assert out["z_mean"].shape == (5, 2) and "z_std" not in out
    q = model.encoder(binary_images(5))
    z = q.base_dist.mean
    for transform in q.transforms:
        z = transform(z)
    torch.testing.assert_close(out["z_mean"], z)


def test_the_encoder_gives_the_flow_its_parameters():
    encoder = Encoder(partial(MLP, hidden=(8,)), Planar(length=4), (1, 3, 4), 5)
    assert encoder.net[-1].out_features == 2 * 5 + 4 * (2 * 5 + 1)
    q = encoder(torch.rand(6, 1, 3, 4))
    assert q.event_shape == (5,) and q.batch_shape == (6,) and q.has_rsample


def test_trained_from_the_config_group_and_evaluated_by_vae_eval(tmp_path):
    from vae_lightning.config import instantiate_node

    cfg = compose_train(["data=frey", "model/posterior=planar",
                         "model.encoder.posterior.length=2", "model.latent=2",
                         "model.encoder.net.hidden=[32]", "model.decoder.net.hidden=[32]",
                         "trainer.max_epochs=2", "trainer.limit_train_batches=5",
                         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                         "logger=none", "trainer.enable_progress_bar=false"], tmp_path / "run")
    results = train(cfg)
    assert results["posterior"] == "planar" and results["status"] == "completed"
    assert math.isfinite(results["test/elbo"])
    from omegaconf import OmegaConf

    eval_cfg = OmegaConf.create({"_target_": "vae_lightning.evaluate.Evaluation", "k": 20,
                                 "device": "cpu"})
    out = instantiate_node(eval_cfg, "eval")(results["checkpoint"], 0, str(tmp_path / "eval"))
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert out["iw"] == saved["iw"] and saved["iw"]["nats"] >= saved["elbo"]["nats"] - 1e-3
    assert 0 <= saved["active_units"] <= 2


def test_dreg_with_it_is_one_config_error(tmp_path):
    cfg = compose_train(["model/posterior=planar", "model/objective=dreg", "logger=none"],
                        tmp_path)
    with pytest.raises(ConfigError, match="density"):
        build_run(cfg)
