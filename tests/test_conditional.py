"""The conditional VAE (vae_lightning.conditional, model=cvae): on a conditional linear-Gaussian
model whose log p(x|y) and exact posterior are known in closed form, every importance weight is
log p(x|y) for the right label and the wrong label scores the other class's density; the
class-conditional prior's KL is analytic and matches Monte Carlo; labels are checked, broadcast
over sample dimensions, handed to the parts by every step and method; condition vectors are read
as they are, a label as its one-hot vector (the same numbers), by the networks and the prior
(linear in the vector); and the preset trains on MNIST, is evaluated with its labels and samples
each class."""

from __future__ import annotations

import json
import math

import conditional_gaussian as cg
import pytest
import torch
from compose import SHARED_DATA, compose_train, short_mnist_run
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from vae_lightning.conditional import ClassNormal, Conditioned
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import Decoder, GaussianFixed
from vae_lightning.module import VAE
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.posteriors import Encoder, Gaussian

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

def test_with_the_exact_posterior_the_estimate_is_log_p_of_x_given_y_for_any_k():
    model, (x, y) = cg.model(), cg.data()
    for k in (1, 7):
        torch.testing.assert_close(model.log_likelihood(x, k=k, y=y), cg.log_p(x, y),
                                   atol=1e-4, rtol=0)
    # The other label gives the other class's density (the parts read the labels they get).
    other = model.log_likelihood(x, k=2000, y=1 - y)
    assert (other <= cg.log_p(x, 1 - y) + 0.05).all()  # a bound on log p(x|y') ...
    assert (other < cg.log_p(x, y) - 0.5).all()  # ... well below the right label's


def test_the_elbo_of_the_exact_posterior_is_log_p_of_x_given_y_in_expectation():
    model, (x, y) = cg.model(), cg.data()
    torch.manual_seed(3)
    elbo = torch.stack([model.bound(x, y).elbo for _ in range(4000)]).mean(0)
    torch.testing.assert_close(elbo, cg.log_p(x, y), atol=0.08, rtol=0)


def test_the_class_prior_kl_is_analytic_and_matches_monte_carlo():
    prior = ClassNormal(4, classes=3)
    with torch.no_grad():
        prior.loc.normal_()
        prior.log_scale.uniform_(-0.5, 0.5)
    y = torch.tensor([0, 2, 1, 2])
    prior.given(y)
    p = prior.distribution()
    torch.testing.assert_close(p.mean, prior.loc[y])
    q = Independent(Normal(torch.randn(4, 4), torch.rand(4, 4) + 0.5), 1)
    analytic = kl_divergence(q, p)
    torch.manual_seed(0)
    z = q.sample((200000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(mc, analytic, atol=0.03, rtol=0.01)


def test_labels_are_checked_and_broadcast_over_sample_dimensions():
    net = Conditioned((1, 2, 2), (5,), cg.LINEAR, classes=3)
    net.given(torch.tensor([0, 2]))
    x = torch.randn(2, 1, 2, 2)
    out = net(x)
    assert out.shape == (2, 5)
    torch.testing.assert_close(net(x.expand(4, 2, 1, 2, 2)), out.expand(4, 2, 5))
    net.given(torch.tensor([1, 2]))
    assert not torch.allclose(net(x), out)  # the label changes the output
    with pytest.raises(ConfigError, match="outside 0..2"):
        net.given(torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match="3 labels given for a batch of 2"):
        net.given(torch.tensor([0, 1, 2]))
        net(x)
    net.given(None)
    with pytest.raises(ConfigError, match="conditional on a class label"):
        net(x)
    # A hidden label: it sent an M2 model's user to model/objective=m2, its own objective.
    net.given(torch.tensor([0, -1]))
    with pytest.raises(ConfigError, match=r"no label \(-1\).*Only model=m2 sums over the "
                                          r"classes.*M2's log_likelihood without y") as refused:
        net(x)
    assert "model/objective=m2" not in str(refused.value)


def test_a_condition_vector_is_read_as_it_is_and_a_label_as_its_one_hot_vector():
    """c(y): the wrapped network sees [x, y] for floats y [batch, K], [x, one-hot(y)] for a
    label, so a label is the condition vector of its unit vector; checked shape and values."""
    net = Conditioned((1, 2, 2), (5,), cg.LINEAR, classes=3)
    x, c = torch.randn(2, 1, 2, 2), torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, 1.0]])
    net.given(c)
    torch.testing.assert_close(net(x), net.net(torch.cat([x.flatten(1), c], 1)))
    torch.testing.assert_close(net(x.expand(4, 2, 1, 2, 2)), net(x).expand(4, 2, 5))
    net.given(torch.tensor([2, 0]))
    labelled = net(x)
    net.given(torch.eye(3)[[2, 0]])
    assert torch.equal(net(x), labelled)
    for bad, words in ((torch.ones(2, 4), r"floats \[batch, 3\].* shape \[2, 4\]"),
                       (torch.ones(2), r"got torch.float32 of shape \[2\]"),
                       (torch.tensor([[0.0, math.inf, 1.0]] * 2), "not finite")):
        with pytest.raises(ConfigError, match=words):
            net.given(bad)


def test_the_class_prior_is_linear_in_a_condition_vector():
    """p(z|c) = N(c^T M, diag exp(2 c^T S)): at c = one-hot(y), class y's Gaussian exactly."""
    prior = ClassNormal(4, classes=3)
    with torch.no_grad():
        prior.loc.normal_()
        prior.log_scale.uniform_(-0.5, 0.5)
    prior.given(torch.tensor([0, 2]))
    by_label = prior.distribution()
    prior.given(torch.eye(3)[[0, 2]])
    by_vector = prior.distribution()
    assert torch.equal(by_vector.mean, by_label.mean)
    assert torch.equal(by_vector.stddev, by_label.stddev)
    c = torch.tensor([[0.5, -1.0, 2.0]])
    prior.given(c)
    p = prior.distribution()
    torch.testing.assert_close(p.mean, c @ prior.loc)
    torch.testing.assert_close(p.stddev, (c @ prior.log_scale).exp())


def test_the_model_takes_condition_vectors_through_every_method():
    model, (x, y) = cg.model(), cg.data()
    vectors = torch.eye(2)[y]  # the labels' own unit vectors: the same model, the same numbers
    torch.manual_seed(0)
    by_label = model.log_likelihood(x, k=5, y=y)
    torch.manual_seed(0)
    torch.testing.assert_close(model.log_likelihood(x, k=5, y=vectors), by_label)
    torch.testing.assert_close(model.log_likelihood(x, k=5, y=vectors), cg.log_p(x, y),
                               atol=1e-4, rtol=0)  # the exact posterior: log p(x|y) for any k
    halfway = torch.tensor([0.5, 0.5])  # one vector for all: decoded between the classes
    z = torch.zeros(1, 3)
    between = model.images(z, y=halfway)
    torch.testing.assert_close(between, (model.images(z, y=0) + model.images(z, y=1)) / 2)
    assert model.sample(3, y=halfway).shape == (3, *cg.SHAPE)


def test_every_method_hands_the_labels_to_the_parts_and_asks_for_them():
    model, (x, y) = cg.model(), cg.data()
    q = model.encode(x, y)
    torch.testing.assert_close(q.mean, model.encode(x, y).mean)
    assert not torch.allclose(q.mean, model.encode(x, 1 - y).mean)
    assert model.sample(6).shape == (6, *cg.SHAPE)
    torch.manual_seed(0)
    ones = model.sample(500, y=1, mean=True).flatten(1).mean(0)
    # E[x|y] = B MU[y] + C[:, y]: the decoded means of z ~ p(z|y) average to it.
    torch.testing.assert_close(ones, cg.B * cg.MU[1] + cg.C[:, 1], atol=0.15, rtol=0)
    assert model.reconstruct(x, y).shape == x.shape
    assert model.interpolate(x[:2], x[2:4], steps=3, y=y[:2]).shape == (3, 2, *cg.SHAPE)
    for call in (lambda: model.encode(x), lambda: model.reconstruct(x),
                 lambda: model.log_likelihood(x, k=2)):
        with pytest.raises(ValueError, match="conditional on a class label"):
            call()
    # After each method the parts hold no labels: nothing leaks into the next call.
    assert all(part.labels._y is None for part in model._conditional)


def test_a_refused_label_leaves_the_model_as_it_was():
    """A class outside the model's is refused, and the next call with good labels works (the
    refused labels were kept and refused again at every later call)."""
    model, (x, y) = cg.model(), cg.data()
    torch.manual_seed(0)
    before = model.sample(2, y=1)
    for bad in (lambda: model.sample(2, y=99), lambda: model.encode(x, y + 5)):
        with pytest.raises(ValueError, match="outside"):
            bad()
    torch.manual_seed(0)
    torch.testing.assert_close(model.sample(2, y=1), before)
    torch.testing.assert_close(model.encode(x, y).mean, model.encode(x, y).mean)
    assert all(part.labels._y is None for part in model._conditional)


def test_model_classes_must_match_the_parts():
    encoder = Encoder(cg.CONDITIONED, Gaussian(), cg.SHAPE, latent=3)
    decoder = Decoder(cg.LINEAR, GaussianFixed(cg.SIGMA), cg.SHAPE, latent=3)
    with pytest.raises(ValueError, match="classes=3, but parts of the model are conditional on"):
        VAE(encoder, decoder, ClassNormal(3, classes=2), ELBO(), classes=3)


def test_a_convolutional_encoder_reads_the_condition_as_constant_channels():
    """via=channels: the network built for (C + K, H, W) images applied to the image with c(y)
    appended as K constant planes, exactly, over sample dimensions too; a flat input is
    refused for it."""
    from functools import partial

    from vae_lightning.conv_nets import ConvEncoder

    torch.manual_seed(0)
    wrapped = Conditioned((1, 8, 4), (6,), partial(ConvEncoder, channels=[3]), classes=3,
                          via="channels")
    assert wrapped.net.layer_input == (4, 8, 4)
    x, y = torch.rand(5, 1, 8, 4), torch.tensor([0, 2, 1, 2, 0])
    wrapped.given(y)
    planes = nn.functional.one_hot(y, 3).float()[:, :, None, None].expand(5, 3, 8, 4)
    assert torch.equal(wrapped(x), wrapped.net(torch.cat([x, planes], 1)))
    assert torch.equal(wrapped(x.expand(2, 5, 1, 8, 4))[1], wrapped(x))
    before = wrapped(x)
    wrapped.given((y + 1) % 3)  # another class for every point: another output
    assert not torch.isclose(wrapped(x), before).all(-1).any()
    wrapped.given(torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="2 labels given for a batch of 5"):
        wrapped(x)
    with pytest.raises(Exception, match="via.*image input"):
        Conditioned((32,), (6,), partial(ConvEncoder, channels=[3]), classes=3, via="channels")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(),
                    reason="needs ../shared/data/mnist (the shared data folder)")
@pytest.mark.parametrize("networks", ["conditional_mlp", "conditional_conv"])
def test_the_preset_trains_on_mnist_and_each_class_is_sampled(tmp_path, networks):
    """model=cvae on MNIST, 300 steps, with MLPs or convolutional networks: the loss falls; the
    test bound is log p(x|y) with the true labels, above the bound with the labels shuffled;
    samples of class 1 and 0 differ as the digits do (a 1 has far fewer ink pixels than a 0)."""
    rows = short_mnist_run(["model=cvae", "data=mnist", "model/prior=class_normal",
                            f"model/encoder={networks}", f"model/decoder={networks}"], tmp_path)
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert losses[-1] < losses[0] - 50
    assert (tmp_path / "figures" / "samples.png").is_file()
    saved = json.loads((tmp_path / "results.json").read_text())  # its bounds are of log p(x|y)
    assert saved["bound_of"].startswith("log p(x|y), a conditional likelihood of each image "
                                        "given its own class label y")
    model = VAE.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.classes == 10
    from vae_lightning.config import instantiate_node

    dm = instantiate_node(compose_train(["data=mnist", f"data.root={SHARED_DATA}"]).data, "data")
    dm.setup("test")
    x, y = dm.evaluation_data("test")[:200], dm.evaluation_labels("test")[:200]
    torch.manual_seed(0)
    right = model.bound(x, y).elbo.mean()
    wrong = model.bound(x, (y + 1) % 10).elbo.mean()
    assert right > wrong + 5  # the labels carry information about the digit
    ink = [model.sample(100, y=c).mean().item() for c in (0, 1)]
    assert ink[1] < 0.8 * ink[0]
    assert math.isfinite(right.item())


def test_a_model_with_classes_but_no_conditional_part_bounds_log_p_of_x():
    """Such a model (trainable before hostile round eleven refused it) is unconditional: its
    evaluation says log p(x), not log p(x|y) as model.classes alone suggested."""
    from models import small_vae

    from vae_lightning.log_likelihood import bound_of

    assert bound_of(small_vae(classes=3)) == "log p(x)"


def test_the_labels_a_conditional_model_is_given_are_checked_with_advice_that_helps(caplog):
    """Data without labels: the refusal names where labels come from (data.labels_key, class
    subfolders), not "set model.classes" (which cannot help); labels out of range: the range;
    fewer classes than model.classes: a warning naming the number to set."""
    from types import SimpleNamespace

    from models import small_vae

    from vae_lightning.run_checks import check_labels

    model = small_vae(classes=3, prior=ClassNormal(2, classes=3))
    x = torch.zeros(4, 1, 3, 4)

    def data(*labels):
        return SimpleNamespace(splits={"train": (x, torch.tensor(labels[0])),
                                       "val": (x, torch.tensor(labels[1]))})

    with pytest.raises(ConfigError) as err:
        check_labels(model, data([-1] * 4, [-1] * 4))
    assert "the data's train split has no labels: data=array reads them only with " \
           "data.labels_key=<its array of labels>" in str(err.value)
    assert "data=folder from class subfolders" in str(err.value)
    assert "set model.classes" not in str(err.value)
    with pytest.raises(ConfigError, match=r"val split has labels 0..3; set model.classes to the "
                                          "number of classes"):
        check_labels(model, data([0, 1, 2, 0], [0, 1, 3, 0]))
    with caplog.at_level("WARNING"):
        check_labels(model, data([0, 1, 2, 0], [0, 1, 2, 2]))
    assert "never occur" not in caplog.text
    with caplog.at_level("WARNING"):
        check_labels(model, data([0, 1, 1, 0], [0, 1, 0, 0]))
    assert "model.classes=3, but the data's labels are 0..1: label 2 never occurs" \
        in caplog.text and "set model.classes=2." in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_labels(model, data([0, 0, 0, 0], [0, 0, 0, 0]))
    assert "labels 1..2 never occur" in caplog.text
