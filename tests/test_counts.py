"""Likelihoods of counts (model/likelihood=poisson, negative_binomial) and the data they score,
data=array's integer feature vectors: each log-probability is its closed form (scipy's) and sums
to one over the counts, exactly where float32 would cancel away the answer; the negative
binomial has scVI's mean and variance mu + mu^2 / theta and tends to the Poisson; integer
vectors are served as counts, refused when negative or beyond float32's exact integers, and
refused under any other likelihood (and a likelihood of counts on anything else), before
training; a model of counts trains, reports bits per value as a code length, and takes integer
tensors in the Python API; and on overdispersed counts the negative binomial's bound beats the
Poisson's."""

import json
import math

import compose
import numpy as np
import pytest
import torch
from compose import compose_train
from scipy import stats

from vae_lightning import VAE
from vae_lightning.data import ArrayDataModule, DataError
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import Evaluation
from vae_lightning.likelihoods import NegativeBinomial, Poisson
from vae_lightning.nets import MLP
from vae_lightning.train import build_run, train


def _value(eta: torch.Tensor) -> torch.Tensor:
    """Decoder outputs ``[..., n_params * C, H, W]`` for one value per parameter: ``eta``
    ``[..., n_params]`` as a [n_params, 1, 1] image."""
    return eta[..., :, None, None]


@pytest.mark.parametrize("eta, k", [(0.3, 0), (0.3, 4), (-30.0, 0), (-30.0, 2), (9.2, 10_000),
                                    (9.2, 9_000), (2.0, 16_777_216)])
def test_poisson_is_its_closed_form(eta, k):
    """log p(k) = k eta - e^eta - log k! (scipy's logpmf at rate e^eta), finite where the rate
    underflows, and right to float32's rounding of the answer where its terms are 10^5 or
    10^8 (float32 arithmetic would be off by hundredths, or by hundreds)."""
    eta = torch.tensor([eta])  # float32: the reference takes the same eta
    got = Poisson()(_value(eta)).log_prob(torch.tensor([[[float(k)]]]))
    want = stats.poisson.logpmf(k, math.exp(eta.item()))
    assert got.dtype == torch.float32 and math.isfinite(got.item())
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("mu, theta", [(0.05, 0.3), (3.0, 1.0), (40.0, 5.0), (2000.0, 0.7),
                                       (7.0, math.exp(20.0))])
def test_negative_binomial_is_scvi_closed_form_and_sums_to_one(mu, theta):
    """p(k) = Gamma(k + theta) / (Gamma(theta) k!) (theta / (theta + mu))^theta
    (mu / (theta + mu))^k: scipy's nbinom(theta, theta / (theta + mu)) at every k, to float32's
    rounding of the answer (at theta = e^20 the log-gamma terms are 10^9); it sums to one, with
    mean mu and variance mu + mu^2 / theta."""
    likelihood = NegativeBinomial()
    eta = torch.tensor([math.log(mu), math.log(theta)])
    dist = likelihood(_value(eta))
    ks = np.arange(0, int(mu + 60 * math.sqrt(mu + mu * mu / theta)) + 50)
    got = dist.log_prob(torch.tensor(ks, dtype=torch.float32)[:, None, None, None]).double()
    want = stats.nbinom.logpmf(ks, theta, theta / (theta + mu))
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-6, atol=2e-5)
    p = got.exp().numpy()
    assert p.sum() == pytest.approx(1.0, abs=1e-4)
    assert (ks * p).sum() == pytest.approx(mu, rel=1e-3)
    variance = ((ks - mu) ** 2 * p).sum()
    assert variance == pytest.approx(mu + mu * mu / theta, rel=1e-3)
    assert dist.mean.item() == pytest.approx(mu, rel=1e-5)


def test_negative_binomial_draws_have_its_moments_and_tend_to_the_poisson():
    """Monte-Carlo: draws' mean mu and variance mu + mu^2 / theta; at the clamp (theta = e^20)
    its log-probabilities are the Poisson's."""
    torch.manual_seed(0)
    mu, theta, n = 6.0, 1.5, 200_000
    dist = NegativeBinomial()(_value(torch.tensor([math.log(mu), math.log(theta)])))
    x = dist.sample((n,)).double()
    assert x.mean().item() == pytest.approx(mu, abs=4 * math.sqrt((mu + mu * mu / theta) / n))
    assert x.var().item() == pytest.approx(mu + mu * mu / theta, rel=0.03)
    ks = torch.arange(0.0, 40.0)[:, None, None, None]
    nb = NegativeBinomial()(_value(torch.tensor([math.log(mu), 50.0])))  # clamped at 20
    poisson = Poisson()(_value(torch.tensor([math.log(mu)])))
    torch.testing.assert_close(nb.log_prob(ks), poisson.log_prob(ks), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("likelihood", [Poisson(), NegativeBinomial(),
                                        Poisson(zero_inflated=True),
                                        NegativeBinomial(zero_inflated=True)], ids=str)
def test_a_likelihood_of_counts_is_discrete_and_its_output_bias_is_the_mean(likelihood):
    """Counts are a probability's values, so -log2 p(x) / D is a code length; the output bias
    puts the mean of p(x|z) at the data's mean where the last layer's weights are zero."""
    assert likelihood.discrete and likelihood.counts
    mean = torch.tensor([[[0.0, 0.5, 12.0]]])
    bias = likelihood.mean_bias(mean)
    assert bias.shape == (likelihood.n_params, 1, 3)
    torch.testing.assert_close(likelihood(bias[None]).mean[0],
                               mean.clamp_min(1e-3), rtol=1e-5, atol=0)


@pytest.mark.parametrize("base, eta", [("poisson", [math.log(4.0)]),
                                       ("negative_binomial", [math.log(30.0), math.log(0.8)])])
@pytest.mark.parametrize("gate", [-4.0, 0.0, 1.5])
def test_zero_inflation_adds_zeros_at_its_gate_and_sums_to_one(base, eta, gate):
    """p(0) = pi + (1 - pi) q(0), p(k) = (1 - pi) q(k) for k > 0 with pi = sigmoid(gate): the
    log-probabilities are the mixture's, sum to one, with mean (1 - pi) E_q[k] and variance
    (1 - pi) (Var_q[k] + pi E_q[k]^2); draws are zero at p(0)'s rate (Monte-Carlo)."""
    cls = {"poisson": Poisson, "negative_binomial": NegativeBinomial}[base]
    plain, inflated = cls(), cls(zero_inflated=True)
    assert (plain.n_params + 1, plain.channels(3) + 3) == (inflated.n_params, inflated.channels(3))
    q = plain(_value(torch.tensor(eta)))
    p = inflated(_value(torch.tensor([*eta, gate])))
    pi = torch.sigmoid(torch.tensor(gate)).item()
    ks = torch.arange(0.0, 1200.0)[:, None, None, None]
    log_p, log_q = p.log_prob(ks).double(), q.log_prob(ks).double()
    assert log_p[0].exp().item() == pytest.approx(pi + (1 - pi) * log_q[0].exp().item(),
                                                  rel=1e-5)
    torch.testing.assert_close(log_p[1:], log_q[1:] + math.log(1 - pi), rtol=1e-6, atol=1e-4)
    prob, k = log_p.exp(), ks.flatten().double()
    assert prob.sum().item() == pytest.approx(1.0, abs=1e-5)
    mean_q = (k * log_q.exp()).sum().item()
    var_q = ((k - mean_q) ** 2 * log_q.exp()).sum().item()
    assert p.mean.item() == pytest.approx((k * prob).sum().item(), rel=1e-4)
    assert p.mean.item() == pytest.approx((1 - pi) * mean_q, rel=1e-4)
    assert p.base_dist.variance.item() == pytest.approx((1 - pi) * (var_q + pi * mean_q ** 2),
                                                        rel=1e-3)
    torch.manual_seed(0)
    n = 100_000
    zeros = (p.sample((n,)) == 0).double().mean().item()
    p0 = log_p[0].exp().item()
    assert zeros == pytest.approx(p0, abs=5 * math.sqrt(p0 * (1 - p0) / n) + 1e-4)


def test_integer_vectors_are_served_as_counts(tmp_path):
    x = np.random.default_rng(0).poisson(3.0, (30, 7)).astype(np.int32)
    x[4, 2] = 2 ** 24  # the largest count float32 holds exactly, and its neighbours do not
    np.save(tmp_path / "c.npy", x)
    dm = ArrayDataModule(path=str(tmp_path / "c.npy"), val_size=5, test_size=5)
    assert dm.counts and not dm.real_values and dm.shape == (1, 1, 7)
    dm.setup()
    served = torch.cat([dm.splits[s][0] for s in ("train", "val", "test")])
    assert served.dtype == torch.float32
    assert sorted(map(tuple, served.long().numpy())) == sorted(map(tuple, x.astype(np.int64)))
    batch = dm.to_inputs((dm.splits["train"][0][:4], dm.splits["train"][1][:4]))[0]
    assert batch.shape == (4, 1, 1, 7)
    torch.testing.assert_close(batch.flatten(1), dm.splits["train"][0][:4], rtol=0, atol=0)
    assert not ArrayDataModule(path=str(save_uint8(tmp_path)), val_size=1, test_size=1).counts


def save_uint8(tmp_path):
    np.save(tmp_path / "u.npy", np.zeros((10, 7), np.uint8))  # uint8 vectors: pixels
    return tmp_path / "u.npy"


@pytest.mark.parametrize("value, words", [
    (-1, r"vector 3 \(of 1 such\) holds a negative value: integer feature vectors are counts"),
    (2 ** 24 + 1, r"vector 3 \(of 1 such\) holds a value above 2\^24 = 16,777,216"),
])
def test_counts_float32_cannot_hold_are_refused_naming_the_vector(tmp_path, value, words):
    x = np.ones((20, 5), np.int64)
    x[3, 1] = value
    np.savez(tmp_path / "c.npz", x=x, x_test=np.ones((4, 5), np.int64))
    with pytest.raises(DataError, match=words):
        ArrayDataModule(path=str(tmp_path / "c.npz"), val_size=2, test_size=2).setup()
    np.savez(tmp_path / "t.npz", x=np.ones((20, 5), np.int64), x_test=x)
    with pytest.raises(DataError, match="'x_test'.*" + words):
        ArrayDataModule(path=str(tmp_path / "t.npz"), test_key="x_test", val_size=2).setup()


def test_binarized_counts_are_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((20, 5), np.int16))
    with pytest.raises(DataError, match="binarize='dynamic', but .* holds integer feature "
                       r"vectors, counts, .*model/likelihood=poisson or negative_binomial\)"):
        ArrayDataModule(path=str(tmp_path / "c.npy"), binarize="dynamic")


@pytest.mark.parametrize("data, likelihood, words", [
    ("counts", [], r"\(ContinuousBernoulli\) is a distribution of values in \[0, 1\], but "
                   r".* holds integer feature vectors, counts: expected .*poisson or "
                   "negative_binomial"),
    ("counts", ["model/likelihood=gaussian", "model.decoder.likelihood.mean_activation=identity"],
     r"\(Gaussian\) is a distribution of real numbers, but .* counts"),
    ("floats", ["model/likelihood=poisson"], r"\(Poisson\) is a distribution of counts, but .* "
                                             "holds float feature vectors"),
    ("frey", ["model/likelihood=negative_binomial"],
     r"\(NegativeBinomial\) is a distribution of counts, non-negative integers, but the data are "
     r"FreyFaceDataModule's pixel values in \[0, 1\]: expected counts as integer feature "
     r"vectors \[N, D\]"),
])
def test_counts_and_a_likelihood_of_counts_go_only_together(tmp_path, data, likelihood, words):
    """Refused when the run is built, before any data are read or any step taken."""
    if data == "counts":
        overrides = compose.counts_data(tmp_path)
    elif data == "floats":
        np.save(tmp_path / "f.npy", np.zeros((20, 5), np.float32))
        overrides = ["data=array", f"data.path={tmp_path / 'f.npy'}"]
    else:
        overrides = ["data=frey"]
    with pytest.raises(ConfigError, match=words):
        build_run(compose_train([*overrides, *likelihood], tmp_path))


def test_log_input_reads_log_one_plus_x():
    torch.manual_seed(0)
    plain = MLP((1, 1, 5), (3,), hidden=(4,))
    logged = MLP((1, 1, 5), (3,), hidden=(4,), log_input=True)
    logged.load_state_dict(plain.state_dict())
    x = torch.tensor([[[[0.0, 1.0, 10.0, 1e3, 1e6]]]])
    torch.testing.assert_close(logged(x), plain(torch.log1p(x)))


@pytest.mark.parametrize("log_input", [True, False])
def test_m2_s_classifier_reads_what_its_encoder_reads(tmp_path, log_input):
    """M2 on counts: q(y|x) is the encoder's other half, and read raw counts where q(z|x, y) read
    log(1 + x) (hostile round seventeen's idea): its classifier follows
    model.encoder.net.log_input; a model whose encoder net has no such key builds as before."""
    run = build_run(compose_train([*compose.counts_data(tmp_path), "model=m2", "model.classes=3",
                                   "model/likelihood=poisson", "data.labelled=30",
                                   f"model.encoder.net.log_input={str(log_input).lower()}"],
                                  tmp_path / "run"))
    classifier = run.model.objective.classifier
    assert classifier.log_input is log_input
    shape = tuple(run.datamodule.shape)
    x = torch.tensor([0.0, 3.0, 250.0] * 4).reshape(1, *shape)
    plain = MLP(shape, (3,), hidden=(500,), activation="softplus")
    plain.load_state_dict(classifier.state_dict())
    torch.testing.assert_close(run.model.objective.classify(x),
                               plain(torch.log1p(x) if log_input else x))


SHORT = ["model.latent=2", "model.encoder.net.hidden=[32]", "model.decoder.net.hidden=[32]",
         "model.encoder.net.log_input=true", "data.batch_size=50", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _bound(tmp_path, likelihood, overrides, steps=300):
    torch.manual_seed(0)
    run = tmp_path / likelihood
    train(compose_train([*overrides, f"model/likelihood={likelihood}", *SHORT,
                         f"trainer.max_steps={steps}"], run))
    return json.loads((run / "results.json").read_text()), run


def test_the_negative_binomial_beats_the_poisson_and_no_z_on_overdispersed_counts(tmp_path,
                                                                                   one_thread):
    """On counts drawn from negative binomials (inverse dispersion 2) around three profiles,
    both train to a finite bound, and the negative binomial's test ELBO beats the Poisson's (a
    Poisson's variance is its mean, and these counts vary more than the two latent dimensions
    can explain) and the best model of the counts without z (a fitted negative binomial per
    value: the latent space holds the profiles). Its eval.json and the Python API speak of
    counts: bits per value as a code length, integer tensors taken, anything else refused."""
    data = compose.counts_data(tmp_path, n=1500, d=20)
    nb, run = _bound(tmp_path, "negative_binomial", data)
    poisson, _ = _bound(tmp_path, "poisson", data)
    assert math.isfinite(nb["test/elbo"]) and math.isfinite(poisson["test/elbo"])
    assert nb["test/elbo"] > poisson["test/elbo"] + 5.0, (nb["test/elbo"], poisson["test/elbo"])
    assert nb["test/bits_per_dim"] == pytest.approx(-nb["test/elbo"] / (20 * math.log(2)),
                                                    rel=1e-5)
    # Better than the counts' best model without z: a negative binomial per value, fitted to
    # the training split by its moments, scored on the test split (log p(x) of each vector).
    dm = build_run(compose_train([*data, "model/likelihood=negative_binomial"],
                                 tmp_path)).datamodule
    dm.setup()
    train_x, test_x = (dm.splits[s][0].double().numpy() for s in ("train", "test"))
    mean, var = train_x.mean(0), train_x.var(0)
    theta = mean ** 2 / np.maximum(var - mean, 1e-6)
    marginal = stats.nbinom.logpmf(test_x, theta, theta / (theta + mean)).sum(1).mean()
    assert nb["test/elbo"] > marginal + 0.5, (nb["test/elbo"], marginal)

    path = data[1].split("=", 1)[1]
    results = Evaluation(k=20, device="cpu", limit=50, data_path=path)(
        str(run / "checkpoints/last.ckpt"), 0, str(tmp_path / "eval"))
    assert "probability of the counts" in results["units"] and "pixel" not in results["units"]
    assert results["iw"]["bits_per_dim"] == pytest.approx(
        -results["iw"]["nats"] / (20 * math.log(2)), rel=1e-6)

    model = VAE.load_from_checkpoint(run / "checkpoints/last.ckpt")
    x = torch.as_tensor(np.load(path)["x"][:8]).reshape(
        -1, *model.data_shape)  # int64 counts
    log_px = model.log_likelihood(x, k=10)
    assert log_px.shape == (8,) and torch.isfinite(log_px).all()
    draws = model.sample(4, mean=False)
    assert torch.equal(draws, draws.round()) and (draws >= 0).all()
    for bad in (x - 1, x + 0.5):
        with pytest.raises(ValueError, match="not counts .*NegativeBinomial, is a distribution "
                                             "of counts"):
            model.log_likelihood(bad, k=2)
