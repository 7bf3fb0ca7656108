"""Every posterior with every prior (their KL pairs meet), and every likelihood on each kind of
data (it meets neither the posterior nor the prior), builds a VAE from the config that trains a
step with a finite loss, and every objective trains with every prior it accepts
(the others are refused when the model is composed)."""

import itertools

import compose
import pytest
import torch
from compose import (
    CONF,
    LABELLED,
    compose_train,
    only_apart,
    posterior_features,
    small_posterior,
    small_prior,
)

from vae_lightning.errors import ConfigError
from vae_lightning.train import build_run

GROUPS = ("model/prior", "model/likelihood", "model/posterior")
OPTIONS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in GROUPS}
OBJECTIVES = sorted(p.stem for p in (CONF / "model/objective").glob("*.yaml"))


def _case(*values: str, default: bool):
    """A test case: in the default suite, or (``default`` false) under ``-m slow``."""
    return pytest.param(*values, marks=() if default else pytest.mark.slow)


def _covers(pair: tuple[str, str], defaults: tuple[str, str], special) -> bool:
    """Whether the default suite tries ``pair``: it holds one group's default (so that every
    option is tried with the other group's default), or it is one of the ``special`` pairs a rule
    of the composer names. The rest of the cross product runs under ``-m slow``: each of its
    cases tries options the default suite tries, in another pairing, and the default suite stays
    within CI's time."""
    return pair[0] == defaults[0] or pair[1] == defaults[1] or pair in special


# The pairs the composer has a rule for: the parts that work only together, the hierarchy and
# the Ladder VAE's prior, the VampPrior (its components are q: a posterior without a density is
# refused when composed).
PRIOR_POSTERIOR_RULES = {*compose.ONLY_TOGETHER.items(), ("hierarchy", "hierarchy"),
                         ("hierarchy", "ladder"),
                         *(("vamp", posterior) for posterior in OPTIONS["model/posterior"])}
COMBINATIONS = [
    *[_case(prior, "gaussian", posterior, "mnist" if prior in LABELLED else "frey",
            default=_covers((prior, posterior), ("normal", "gaussian"), PRIOR_POSTERIOR_RULES))
      for prior, posterior in itertools.product(OPTIONS["model/prior"],
                                                OPTIONS["model/posterior"])],
    *[("normal", likelihood, "gaussian", data) for likelihood, data in itertools.product(
        OPTIONS["model/likelihood"], ("frey", "mnist"))],
]
# An objective's rules for priors: the VampPrior with M2 or wake-sleep, a conditional prior
# with M2, the VQ-VAE's prior over codes.
OBJECTIVE_PRIOR_RULES = {("m2", "vamp"), ("wake_sleep", "vamp"), ("m2", "class_normal"),
                         ("vq_vae", "uniform_codes")}
OBJECTIVE_PRIORS = [_case(objective, prior, default=_covers(
                        (objective, prior), ("elbo", "normal"), OBJECTIVE_PRIOR_RULES))
                    for objective, prior in itertools.product(OBJECTIVES,
                                                              OPTIONS["model/prior"])]
SMALL = ["model.latent=2", "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]"]


def _model_and_batch(overrides, tmp_path):
    run = build_run(compose_train(overrides, tmp_path))
    run.datamodule.setup("fit")
    x, y = run.datamodule.to_inputs(next(iter(run.datamodule.train_dataloader())))
    return run.model, x[:16], y[:16]


def _one_step(model, x, y):
    """One optimizer step on the objective's loss, the parts given the labels ``y`` (a
    conditional model's): (loss before, parameters changed)."""
    optimizer = model.configure_optimizers()
    if isinstance(optimizer, list | tuple):  # the model's, then an objective's own (FactorVAE)
        optimizer = optimizer[0]
    if isinstance(optimizer, dict):  # with its learning-rate schedule
        optimizer = optimizer["optimizer"]
    before = [p.detach().clone() for p in model.parameters()]
    with model.given(y):
        loss, bound = model.objective.loss(model, x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return loss.detach(), bound, changed


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
    """A root with small MNIST-format files, so data=mnist builds without a download."""
    return compose.mnist_like(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("prior, likelihood, posterior, data", COMBINATIONS, ids=str)
def test_every_combination_trains_a_step_with_finite_loss(prior, likelihood, posterior, data,
                                                          mnist_like, tmp_path):
    overrides = [f"data={data}", *small_prior(prior), f"model/likelihood={likelihood}",
                 *small_posterior(posterior), *SMALL, f"data.root={mnist_like}",
                 "data.val_size=50"]
    torch.manual_seed(0)
    if posterior == "ladder" and prior != "hierarchy":
        # The Ladder VAE infers top-down with the prior's own networks (model=ladder hands the
        # prior its layers: a prior without them is refused at that key).
        with pytest.raises(ConfigError, match=r"layers.*not an argument.*as model.prior.layers"):
            build_run(compose_train(overrides, tmp_path))
        return
    if only_apart(prior, posterior):
        # The VQ-VAE's quantizer and its prior over codes work only together (model=vq_vae),
        # as do relaxed categorical latents and their prior (model=gumbel).
        with pytest.raises(ConfigError, match="does not have"):
            build_run(compose_train(overrides, tmp_path))
        return
    if prior == "vamp" and "density" not in posterior_features(posterior):
        # The VampPrior's components are q itself at the pseudo-inputs, scored at z from
        # elsewhere: a flow without an inverse cannot be one, and is refused when composed.
        with pytest.raises(ConfigError, match="density"):
            build_run(compose_train(overrides, tmp_path))
        return
    if compose.counts_likelihood(likelihood):
        # A likelihood of counts scores data=array's integer vectors only (tests/test_counts.py).
        with pytest.raises(ConfigError, match="is a distribution of counts, non-negative"):
            build_run(compose_train(overrides, tmp_path))
        return
    model, x, y = _model_and_batch(overrides, tmp_path)
    loss, bound, changed = _one_step(model, x, y)
    assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all() and changed
    assert torch.isfinite(model.batch_bound(x, y).elbo).all()  # a batch as the data serve it


@pytest.mark.parametrize("objective, prior", OBJECTIVE_PRIORS, ids=str)
def test_every_objective_trains_with_every_prior_it_accepts(objective, prior, mnist_like,
                                                            tmp_path):
    data = (["data=mnist", f"data.root={mnist_like}", "data.val_size=50"] if prior in LABELLED
            else ["data=frey"])
    overrides = [*data, f"model/objective={objective}", *small_prior(prior), *SMALL]
    if objective == "m2":  # semi-supervised: a conditional model (model=m2) on labelled data
        overrides = ["data=mnist", f"data.root={mnist_like}", "data.val_size=50", "model=m2",
                     *small_prior(prior), "model.latent=2", "model.encoder.net.hidden=[8]",
                     "model.decoder.net.hidden=[8]", "model.objective.hidden=[8]"]
    if objective == "vq_vae":  # with its quantizer (model=vq_vae), the prior chosen here
        overrides += small_posterior("vq")
    if objective == "m2" and prior == "vamp":
        with pytest.raises(ConfigError, match="VampPrior.*conditional model"):
            build_run(compose_train(overrides, tmp_path))
        return
    if objective == "wake_sleep" and prior == "vamp":
        with pytest.raises(ConfigError, match="(?s)model.*VampPrior.*wake-sleep"):
            build_run(compose_train(overrides, tmp_path))
        return
    torch.manual_seed(0)
    try:
        model, x, y = _model_and_batch(overrides, tmp_path)
    except ConfigError as err:  # a pair the parts' features rule out, named when composed
        assert prior != "normal" or objective == "vq_vae", (
            f"every objective but the VQ-VAE's takes the paper's prior: {err}")
        assert "does not have" in str(err) and "prior" in str(err), err
        return
    loss, bound, changed = _one_step(model, x, y)
    assert torch.isfinite(loss) and changed
    assert bound.elbo.shape == (len(x),) and torch.isfinite(bound.elbo).all()
