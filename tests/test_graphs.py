"""The graphed step (model.cuda_graph=true) off CUDA, where it runs eagerly: the same run as the
standard step, bit for bit, with the non-finite check read back every few steps and the update
of a bad step skipped on the device; and what it refuses."""

import pytest
import torch
from compose import compose_train

from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.errors import ConfigError, NonFiniteLossError
from vae_lightning.train import build_run, train

SMALL = ["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
         "model.decoder.net.hidden=[32]", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "callbacks.figures.n_points=0", "logger=none"]
# Frey cut to 465 training faces (10 minibatches of 50, the last of 15; the rest held out for
# test, scored once) with no figures or bound curve (neither is compared): few steps, with the
# groups and the short last minibatch (a second graph) of a full epoch.
SHORT = ["data.batch_size=50", "data.val_size=100", "data.test_size=1400",
         "data.eval_batch_size=500", "~callbacks.figures", "~callbacks.bound_curve"]
METRICS = ("train/elbo", "val/elbo", "val/kl", "test/elbo", "test/recon", "test/kl")


@pytest.mark.parametrize("objective, steps_per_batch", [("elbo", 1), ("elbo", 3),
                                                        ("wake_sleep", 1), ("iwae", 2)])
def test_graphed_steps_give_the_run_of_the_standard_step(objective, steps_per_batch, tmp_path):
    runs = {}
    for graphed in (False, True):
        cfg = compose_train([*SMALL, *SHORT, f"model/objective={objective}",
                             "trainer.max_epochs=2",
                             f"data.steps_per_batch={steps_per_batch}",
                             f"model.cuda_graph={str(graphed).lower()}"],
                            tmp_path / str(graphed))
        results = train(cfg)
        state = read_checkpoint(tmp_path / str(graphed) / "checkpoints" / "last.ckpt")
        runs[graphed] = results, state
    (plain, plain_state), (graphed, graphed_state) = runs[False], runs[True]
    assert graphed["steps"] == plain["steps"] == 20
    assert graphed["train_samples_seen"] == plain["train_samples_seen"]
    for key in METRICS:
        assert graphed[key] == plain[key], key
    for name, value in plain_state["state_dict"].items():
        assert torch.equal(graphed_state["state_dict"][name], value), name


UNFUSED_ADAGRAD = ["model/optimizer=adagrad", "model.optimizer.fused=false"]


@pytest.mark.parametrize("optimizer, atol", [
    ([], 0), (UNFUSED_ADAGRAD, 0), ([*UNFUSED_ADAGRAD, "model.optimizer.weight_decay=0.01"], 1e-7),
], ids=["fused_adam", "adagrad", "adagrad_decay"])
def test_a_non_finite_loss_is_found_later_with_the_last_good_state_kept(optimizer, atol,
                                                                        tmp_path):
    """The NaN at step 5 is read back at step 9 (log_every_n_steps = 10); the updates of steps 5 to
    9 were skipped on the device, so the saved state is the state before step 5: by the fused
    optimizer's found_inf, or, for an unfused Adagrad (torch has no fused Adagrad on CUDA), by
    gradients zeroed on the device (minus the weight decay term: exact to its rounding), which
    leave Adagrad's parameters where they are."""
    nan = ["+callbacks.nan._target_=fault_injection.NaNInputAtStep", "+callbacks.nan.step=5",
           "trainer.max_epochs=2", "trainer.log_every_n_steps=10", *optimizer]
    cfg = compose_train([*SMALL, *SHORT, *nan], tmp_path / "plain")
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        train(cfg)
    cfg = compose_train([*SMALL, *SHORT, *nan, "model.cuda_graph=true"], tmp_path / "graphed")
    with pytest.raises(NonFiniteLossError, match="between step 0 and step 9") as err:
        train(cfg)
    assert "nonfinite-step9.ckpt" in str(err.value) and "skipped" in str(err.value)
    before = read_checkpoint(tmp_path / "plain" / "checkpoints" / "nonfinite-step5.ckpt")
    after = read_checkpoint(tmp_path / "graphed" / "checkpoints" / "nonfinite-step9.ckpt")
    for name, value in before["state_dict"].items():
        torch.testing.assert_close(after["state_dict"][name], value, rtol=0, atol=atol,
                                   msg=name)


@pytest.mark.parametrize("overrides, words", [
    (["model.optimizer.fused=false"], ["cuda_graph", "fused"]),
    (["model/optimizer=adamax"], ["cuda_graph", "fused"]),
    (["model.objective.warmup_steps=100"], ["cuda_graph", "warm-up"]),
    (["model=svae"], ["cuda_graph", "rejection sampler"]),
])
def test_what_a_graphed_step_cannot_do_is_refused_before_training(overrides, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        build_run(compose_train([*SMALL, "model.cuda_graph=true", *overrides], tmp_path))
    for word in words:
        assert word in str(err.value)


def test_an_unfused_adagrad_takes_graphed_steps_as_its_standard_steps(tmp_path):
    """Adagrad where torch has no fused kernel (CUDA): the graphed run is the standard run."""
    states = []
    for graphed in ("false", "true"):
        cfg = compose_train([*SMALL, *SHORT, *UNFUSED_ADAGRAD, "trainer.max_epochs=1",
                             f"model.cuda_graph={graphed}"], tmp_path / graphed)
        train(cfg)
        states.append(read_checkpoint(tmp_path / graphed / "checkpoints" / "last.ckpt"))
    for name, value in states[0]["state_dict"].items():
        assert torch.equal(states[1]["state_dict"][name], value), name


def test_a_fused_update_torch_lacks_on_the_device_becomes_the_default_one(monkeypatch, caplog,
                                                                         tmp_path):
    """Fused Adagrad exists on the CPU only: where ``fusable`` says no (as on CUDA), the
    optimizer is built unfused, and a resumed run's saved groups follow."""
    from functools import partial

    from vae_lightning import optimization

    factory = partial(torch.optim.Adagrad, lr=0.02, fused=True)
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert optimization.fusable(factory, "cpu")
    assert optimization.on_device(factory, params).defaults["fused"] is True
    monkeypatch.setitem(optimization._FUSABLE, (torch.optim.Adagrad, "cpu"), False)
    with caplog.at_level("INFO", logger="vae_lightning.optimization"):
        optimizer = optimization.on_device(factory, params)
    assert not optimizer.defaults["fused"] and "no fused Adagrad" in caplog.text
    optimizer.zero_grad()
    params[0].sum().backward()
    optimizer.step()  # the default update runs
    assert torch.allclose(params[0].detach(), torch.full((3,), -0.02))
    # A run saved with the fused update, resumed where there is none: its groups follow.
    model = build_run(compose_train([*SMALL, "model/optimizer=adagrad"], tmp_path)).model
    saved = {"optimizer_states": [{"param_groups": [{**optimizer.defaults, "fused": True}]}]}
    optimization.apply_settings(model, saved)
    assert saved["optimizer_states"][0]["param_groups"][0]["fused"] is False



class _ReplayedGraph:
    """A stand-in for a CUDA graph on the CPU with its semantics: each replay writes the step's
    gradients into the tensors its capture allocated, whatever the parameters' .grad points at
    by then, and its loss into its static output."""

    def __init__(self, step, static_x):
        self.step, self.static_x = step, static_x
        self.loss = torch.zeros(())
        self.grads = [torch.zeros_like(p) for p in step._params]

    def replay(self):
        loss = self.step.model.objective.loss(self.step.model, self.static_x)[0]
        for buffer, g in zip(self.grads, torch.autograd.grad(loss, self.step._params)):
            buffer.copy_(g)
        self.loss.copy_(loss.detach())


def test_each_minibatch_shape_steps_with_its_own_graphs_gradients(tmp_path):
    """Two graphs (full minibatches and an epoch's smaller last one) each write the gradients
    into tensors of their own: after a replay the optimizer must see that graph's gradient, not
    the other graph's stale one (found on an H200, where the graphed Frey run trained on the
    first epoch's last gradient from then on)."""
    from vae_lightning.graphs import GraphedStep

    class Replayed(GraphedStep):
        def _record(self, x):
            graph = _ReplayedGraph(self, x.detach().clone())
            for p, g in zip(self._params, graph.grads):
                p.grad = g  # a capture leaves .grad at the tensors it allocated
            return graph, graph.static_x, (graph.loss, graph.loss, graph.loss), graph.grads

    model = build_run(compose_train([*SMALL, "trainer.max_epochs=1"], tmp_path)).model
    optimizer = model.optimizer(list(model.parameters()))
    step = Replayed(model, optimizer, capture=True)
    for n in (100, 65, 100, 100, 65, 100):
        x = torch.rand(n, 1, 28, 20)
        step(x)
        written = step._graphs[tuple(x.shape)][3]
        assert all(p.grad is g for p, g in zip(step._params, written)), n
        assert any(g.abs().sum() > 0 for g in written)
        optimizer.step()


def test_the_sleep_phase_draws_as_before_with_draws_a_graph_can_capture():
    """The wake-sleep fantasies x ~ p(x|z), z ~ p(z) come from rsample without gradients where
    the distribution has it (torch's Normal.sample reads its scale back to the host, which a
    CUDA graph forbids): on the CPU the very numbers Normal.sample draws, for the prior and a
    Gaussian decoder; sample() where there is no rsample (Bernoulli)."""
    from torch.distributions import Bernoulli, Independent, Normal

    from vae_lightning.parts import capturable_sample
    from vae_lightning.priors import StandardNormal

    gaussian = Independent(Normal(torch.randn(50, 30), torch.rand(50, 30) + 0.1), 1)
    torch_unit = Independent(Normal(torch.zeros(4), torch.ones(4)), 1)  # torch's own sample()
    for reference, draw in ((gaussian.sample, lambda s: capturable_sample(gaussian, s)),
                            (torch_unit.sample, StandardNormal(4).distribution().sample)):
        torch.manual_seed(0)
        before = reference((3,))
        torch.manual_seed(0)
        now = draw((3,))
        assert torch.equal(before, now) and not now.requires_grad
    coin = Bernoulli(logits=torch.zeros(5, requires_grad=True))
    assert set(capturable_sample(coin).tolist()) <= {0.0, 1.0}
