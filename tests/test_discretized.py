"""The likelihoods for 8-bit images: the discretized logistic and its mixture (PixelCNN++).
Probabilities of the grid values k / (bins - 1) that sum to one, log-probabilities equal to the
logistic CDF's bin masses computed directly at high precision (mpmath) for any parameters,
samples distributed as the probabilities say, and a VAE that trains with them."""

from functools import partial

import mpmath
import pytest
import torch
from compose import compose_train
from models import small_vae
from torch.testing import assert_close

from vae_lightning.args import ArgumentError
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import Decoder, DiscretizedLogistic, DiscretizedLogisticMixture
from vae_lightning.nets import MLP
from vae_lightning.train import build_run

mpmath.mp.dps = 60
FLOOR = -8.0  # the default log_scale_min
GRID = torch.arange(256, dtype=torch.float64) / 255


# ------------------------------------------------------------------------ direct reference
def _cdf(t):
    return 1 / (1 + mpmath.exp(-t))


def _ref_log_bin(k, loc, log_scale, bins=256):
    """log P(bin k) of a logistic (loc, e^log_scale) straight from its CDF F, the edge bins
    taking the tails; F(b) - F(a) written as F(-a) - F(-b) right of the mode, where both are
    near 1 (the logistic's symmetry), and with enough digits for the bin's width b - a."""
    n = bins - 1
    width = 1 / (n * mpmath.exp(log_scale))  # b - a
    with mpmath.workdps(60 + max(0, int(-mpmath.log10(width)))):
        s, h, x = mpmath.exp(log_scale), mpmath.mpf(1) / (2 * n), mpmath.mpf(k) / n
        a, b = (x - h - loc) / s, (x + h - loc) / s
        if k == 0:
            return +mpmath.log(_cdf(b))
        if k == n:
            return +mpmath.log(_cdf(-a))  # 1 - F(a)
        return +mpmath.log(_cdf(-a) - _cdf(-b) if a + b > 0 else _cdf(b) - _cdf(a))


def _mp(t):
    return mpmath.mpf(float(t))


def _floor(raw, floor=FLOOR):
    return mpmath.log(mpmath.exp(_mp(raw)) + mpmath.exp(floor))


def _ref_logistic(params, x, bins=256):
    """log p(x) per image of DiscretizedLogistic from its raw outputs [B, 2C, H, W]."""
    n_channels = x.shape[1]
    out = []
    for i in range(x.shape[0]):
        total = mpmath.mpf(0)
        for c in range(n_channels):
            for h in range(x.shape[2]):
                for w in range(x.shape[3]):
                    k = round(float(x[i, c, h, w]) * (bins - 1))
                    loc = mpmath.mpf(0.5) + _mp(params[i, c, h, w])
                    total += _ref_log_bin(k, loc, _floor(params[i, n_channels + c, h, w]), bins)
        out.append(float(total))
    return torch.tensor(out, dtype=torch.float64)


def _ref_mixture(params, x, m, bins=256, coefficients=True):
    """log p(x) per image of DiscretizedLogisticMixture from its raw outputs, following the
    layout of its docstring: logits, then rows of M (locations, log-scales, coefficients)."""
    n_channels = x.shape[1]
    pairs = [(c, p) for c in range(1, n_channels) for p in range(c)] if coefficients else []
    out = []
    for i in range(x.shape[0]):
        total = mpmath.mpf(0)
        for h in range(x.shape[2]):
            for w in range(x.shape[3]):
                def row(r, j, h=h, w=w, i=i):
                    return params[i, m + r * m + j, h, w]

                ks = [round(float(x[i, c, h, w]) * (bins - 1)) for c in range(n_channels)]
                logits = [_mp(params[i, j, h, w]) for j in range(m)]
                log_norm = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in logits))
                terms = []
                for j in range(m):
                    term = logits[j] - log_norm
                    for c in range(n_channels):
                        loc = mpmath.mpf(0.5) + _mp(row(c, j))
                        for index, (cc, p) in enumerate(pairs):
                            if cc == c:
                                alpha = mpmath.tanh(_mp(row(2 * n_channels + index, j)))
                                loc += alpha * (mpmath.mpf(ks[p]) / (bins - 1) - mpmath.mpf(0.5))
                        term += _ref_log_bin(ks[c], loc, _floor(row(n_channels + c, j)), bins)
                    terms.append(term)
                total += mpmath.log(mpmath.fsum(mpmath.exp(t) for t in terms))
        out.append(float(total))
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------------------------ parameters
def _raw(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).float()


def _extreme(params, seed=1):
    """Random outputs with extreme ones mixed in: locations far outside [0, 1], log-scales at
    and far below the floor (tiny scales) and huge, saturated coefficients and logits."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([-1e4, -60.0, -5.0, 3.0, 40.0, 1e3, -100.0, 20.0, 90.0])
    pick = torch.rand(params.shape, generator=g) < 0.35
    chosen = values[torch.randint(len(values), params.shape, generator=g)]
    return torch.where(pick, chosen, 3 * params)


def _images(shape, seed=0):
    """8-bit images k / 255, with the edge values 0 and 255 present."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=g) / 255
    x[..., 0, 0], x[..., -1, -1] = 0.0, 1.0
    return x


# ---------------------------------------------------------------- probabilities sum to one
@pytest.mark.parametrize("loc, log_scale", [(0.0, -3.0), (0.45, -40.0), (-30.0, -7.0),
                                            (25.0, 0.0), (0.2, 15.0), (-0.3, -2.0)])
def test_logistic_probabilities_of_all_256_values_sum_to_one(loc, log_scale):
    likelihood = DiscretizedLogistic()
    params = torch.tensor([loc, log_scale]).view(1, 2, 1, 1)
    x = GRID.float().view(256, 1, 1, 1)
    assert_close(likelihood(params).log_prob(x).exp().sum(), torch.tensor(1.0))
    pixel = likelihood.pixel_distribution(torch.tensor(loc, dtype=torch.float64),
                                          torch.tensor(log_scale, dtype=torch.float64))
    assert_close(pixel.log_prob(GRID).exp().sum(), torch.tensor(1.0, dtype=torch.float64),
                 rtol=0, atol=1e-12)


def test_mixture_probabilities_of_one_grayscale_pixel_sum_to_one():
    likelihood = DiscretizedLogisticMixture(n_components=4)
    for seed in range(4):
        params = _extreme(_raw((1, likelihood.channels(1), 1, 1), seed), seed)
        probs = likelihood(params).log_prob(GRID.float().view(256, 1, 1, 1)).exp()
        assert_close(probs.sum(), torch.tensor(1.0))
        probs = likelihood.distribution(params.double()).log_prob(GRID.view(256, 1, 1, 1)).exp()
        assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)


def _all_rgb_values(bins):
    k = torch.cartesian_prod(*[torch.arange(bins, dtype=torch.float64)] * 3) / (bins - 1)
    return k.view(-1, 3, 1, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_mixture_with_coefficients_sums_to_one_over_all_rgb_values(seed):
    """Every one of the 16^3 colours of one pixel (bins=16), so the coupling of G and B to R is
    a normalised distribution; and with 256 bins, summing G and B out for a fixed R leaves R's
    marginal: the grayscale mixture of R's components, itself normalised (above)."""
    likelihood = DiscretizedLogisticMixture(n_components=3, bins=16)
    params = _extreme(_raw((1, likelihood.channels(3), 1, 1), seed), seed).double()
    probs = likelihood.distribution(params).log_prob(_all_rgb_values(16)).exp()
    assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)

    rgb, gray = DiscretizedLogisticMixture(n_components=3), DiscretizedLogisticMixture(3)
    params = 2 * _raw((1, rgb.channels(3), 1, 1), seed).double()
    m = 3
    r_rows = [params[:, :m], params[:, m:2 * m], params[:, 4 * m:5 * m]]  # logits, loc R, scale R
    marginal = gray.distribution(torch.cat(r_rows, dim=1))
    gb = torch.cartesian_prod(GRID, GRID)
    for r in (0, 77, 255):
        x = torch.cat([torch.full((len(gb), 1), r / 255, dtype=torch.float64), gb], 1)
        joint = rgb.distribution(params).log_prob(x.view(-1, 3, 1, 1)).exp().sum()
        want = marginal.log_prob(torch.full((1, 1, 1), r / 255, dtype=torch.float64)).exp()
        assert_close(joint, want.squeeze(), rtol=1e-10, atol=0)


# ------------------------------------------------------------- log_prob against the CDF
def test_logistic_log_prob_equals_the_cdf_bin_masses_for_extreme_parameters():
    shape, likelihood = (2, 3, 3, 3), DiscretizedLogistic()
    params = _extreme(_raw((2, 6, 3, 3)))
    x = _images(shape)
    want = _ref_logistic(params, x)
    got = likelihood(params).log_prob(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert_close(got.double(), want, rtol=1e-5, atol=1e-2)
    loc, log_scale = params.double().chunk(2, dim=1)
    exact = likelihood.pixel_distribution(loc, log_scale).log_prob(x.double()).sum((-3, -2, -1))
    assert_close(exact, want, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("channels, coefficients", [(1, True), (3, True), (3, False)])
def test_mixture_log_prob_equals_the_cdf_bin_masses_for_extreme_parameters(channels,
                                                                           coefficients):
    m = 3
    likelihood = DiscretizedLogisticMixture(n_components=m, coefficients=coefficients)
    params = _extreme(_raw((2, likelihood.channels(channels), 3, 3)))
    x = _images((2, channels, 3, 3))
    want = _ref_mixture(params, x, m, coefficients=coefficients)
    got = likelihood(params).log_prob(x)
    assert got.shape == (2,) and torch.isfinite(got).all()
    assert_close(got.double(), want, rtol=1e-5, atol=1e-2)
    exact = likelihood.distribution(params.double()).log_prob(x.double())
    assert_close(exact, want, rtol=1e-10, atol=1e-8)


def test_layouts_and_channel_counts():
    assert DiscretizedLogistic().channels(3) == 6
    mixture = DiscretizedLogisticMixture(n_components=5)
    assert mixture.channels(3) == 5 * (1 + 3 * 3) and mixture.channels(1) == 5 * (1 + 2 * 1)
    assert DiscretizedLogisticMixture(5, coefficients=False).channels(3) == 5 * (1 + 2 * 3)
    with pytest.raises(ValueError, match="channels"):
        mixture(torch.zeros(1, 7, 2, 2))


def test_one_component_mixture_is_the_discretized_logistic():
    params = _extreme(_raw((4, 2, 3, 5)))
    x = _images((4, 1, 3, 5))
    logit = _raw((4, 1, 3, 5), seed=3)
    single, mixture = DiscretizedLogistic()(params), DiscretizedLogisticMixture(1)(
        torch.cat([logit, params], dim=1))
    assert mixture.event_shape == single.event_shape == (1, 3, 5)
    assert_close(mixture.log_prob(x), single.log_prob(x))
    assert_close(mixture.mean, single.mean)
    # RGB without coefficients: the same rows after the logit
    params3 = _extreme(_raw((4, 6, 3, 5)))
    x3 = _images((4, 3, 3, 5))
    rgb = DiscretizedLogisticMixture(1, coefficients=False)(torch.cat([logit, params3], dim=1))
    assert_close(rgb.log_prob(x3), DiscretizedLogistic()(params3).log_prob(x3))


def test_off_grid_values_are_scored_as_their_nearest_grid_value():
    params = _raw((2, 6, 3, 3))
    x = _images((2, 3, 3, 3))
    for likelihood, p in ((DiscretizedLogistic(), params),
                          (DiscretizedLogisticMixture(2), _raw((2, 20, 3, 3)))):
        d = likelihood(p)
        off = (x + 0.4 / 255 * torch.sign(torch.randn(x.shape))).clamp(-0.1, 1.1)
        off[..., 0, 0], off[..., -1, -1] = -0.3, 1.7  # outside [0, 1]: the edge values
        assert_close(d.log_prob(off), d.log_prob(x))
        assert torch.isfinite(d.log_prob(x * 256 / 255 - 0.5 / 255)).all()  # x = k / 256 data
    support = DiscretizedLogistic().support
    assert support.is_discrete and support.check(GRID).all()
    assert not support.check(torch.tensor([0.5 / 255, -1 / 255, 1 + 1 / 255])).any()


# ------------------------------------------------------------------------ samples and mean
def _assert_frequencies_match(samples, values, probs):
    """Each value's empirical frequency within 5 standard errors of its probability."""
    n = len(samples)
    counts = (samples.unsqueeze(1) == values.unsqueeze(0)).all(-1).sum(0).double()
    assert counts.sum() == n  # every sample is one of the values
    se = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 5 * se + 1 / n).all()


@pytest.mark.parametrize("likelihood, params", [
    (DiscretizedLogistic(), torch.tensor([0.47, -5.0])),  # scale 1.7 bins, by the top edge
    (DiscretizedLogisticMixture(3), torch.tensor([0.0, 1.0, -1.0, -0.49, 0.1, 0.7,
                                                  -5.5, -4.0, -2.0])),  # sharp, edge, wide
])
def test_grayscale_samples_lie_on_the_grid_with_the_model_probabilities(likelihood, params):
    torch.manual_seed(0)
    d = likelihood(params.view(1, -1, 1, 1))
    samples = d.sample((40000,)).view(-1, 1).double()
    assert d.sample().shape == (1, 1, 1, 1)
    assert DiscretizedLogistic().support.check(samples).all()
    probs = d.log_prob(GRID.float().view(256, 1, 1, 1)).double().exp()
    _assert_frequencies_match((samples * 255).round(), torch.arange(256.0).view(-1, 1), probs)


def test_rgb_samples_follow_the_joint_with_coefficients():
    torch.manual_seed(0)
    likelihood = DiscretizedLogisticMixture(n_components=3, bins=4)
    params = 1.5 * _raw((1, likelihood.channels(3), 1, 1), seed=5)
    d = likelihood(params)
    samples = d.sample((40000,)).view(-1, 3).double()
    values = _all_rgb_values(4).view(-1, 3)
    probs = d.log_prob(values.float().view(-1, 3, 1, 1)).double().exp()
    assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    _assert_frequencies_match((samples * 3).round(), (values * 3).round(), probs)


def test_means_are_exact_in_unit_interval_and_the_coefficient_plug_in_is_close():
    params = _extreme(_raw((2, 6, 3, 3))).double()
    loc, log_scale = params.chunk(2, dim=1)
    pixel = DiscretizedLogistic().pixel_distribution(loc, log_scale)
    probs = pixel.log_prob(GRID.view(256, 1, 1, 1, 1)).exp()  # [256, 2, 3, 3, 3]
    assert_close(pixel.mean, (GRID.view(256, 1, 1, 1, 1) * probs).sum(0))
    for likelihood, channels in ((DiscretizedLogistic(), 3), (DiscretizedLogisticMixture(3), 3),
                                 (DiscretizedLogisticMixture(3), 1)):
        mean = likelihood(_extreme(_raw((2, likelihood.channels(channels), 3, 3)))).mean
        assert mean.shape == (2, channels, 3, 3)
        assert torch.isfinite(mean).all() and (mean >= 0).all() and (mean <= 1).all()
    # With coefficients: exact for R; for G, B the plug-in of the conditioning channels'
    # component means, close to the exact mean when the logistics lie inside [0, 1].
    likelihood = DiscretizedLogisticMixture(n_components=2, bins=16)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 1, 1, generator=g)
    loc = 0.2 * torch.rand(1, 6, 1, 1, generator=g) - 0.1  # locations in [0.4, 0.6]
    log_scale, coef = torch.full((1, 6, 1, 1), -3.5), torch.randn(1, 6, 1, 1, generator=g)
    d = likelihood.distribution(torch.cat([logits, loc, log_scale, coef], 1).double())
    values = _all_rgb_values(16)
    exact = (d.log_prob(values).exp().view(-1, 1, 1, 1) * values).sum(0)
    assert_close(d.mean[0, 0], exact[0], rtol=0, atol=1e-12)
    assert_close(d.mean[0], exact, rtol=0, atol=2e-3)


def test_gradients_are_finite_for_extreme_parameters():
    for likelihood, channels in ((DiscretizedLogistic(), 6), (DiscretizedLogisticMixture(3), 30)):
        params = _extreme(_raw((2, channels, 3, 3))).requires_grad_()
        x = _images((2, 3, 3, 3))
        x[0, 0, 1, 1], x[0, 1, 1, 2] = 0.123456, 1.3  # off the grid and outside [0, 1]
        log_p = likelihood(params).log_prob(x)
        assert torch.isfinite(log_p).all()
        (grad,) = torch.autograd.grad(log_p.sum(), params)
        assert torch.isfinite(grad).all()


# ------------------------------------------------------------------------- in the model
@pytest.mark.parametrize("likelihood", [DiscretizedLogistic(), DiscretizedLogisticMixture(3)])
@pytest.mark.parametrize("data_shape", [(1, 4, 5), (3, 4, 4)])
def test_decoder_emits_the_likelihoods_channels(likelihood, data_shape):
    decoder = Decoder(partial(MLP, hidden=(8,)), likelihood, data_shape, latent=2)
    assert decoder.net.out_shape == (likelihood.channels(data_shape[0]), *data_shape[1:])
    p = decoder(torch.randn(7, 2))
    assert p.batch_shape == (7,) and p.event_shape == data_shape
    assert p.mean.shape == p.sample().shape == (7, *data_shape)
    assert torch.isfinite(p.log_prob(_images((7, *data_shape)))).all()


def test_vae_with_the_mixture_trains_on_8_bit_images():
    torch.manual_seed(0)
    model = small_vae((3, 4, 4), likelihood=DiscretizedLogisticMixture(n_components=2),
                      optimizer=partial(torch.optim.Adam, lr=1e-2))
    x = torch.randint(0, 256, (64, 3, 4, 4)) / 255
    optimizer = model.configure_optimizers()
    losses = []
    for _ in range(40):
        loss, bound = model.objective.loss(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 10  # nats per image
    assert model.sample(3).shape == model.sample(3, mean=False).shape == (3, 3, 4, 4)
    assert DiscretizedLogistic().support.check(model.sample(3, mean=False)).all()


@pytest.mark.parametrize("option, name", [("logistic_mixture", "DiscretizedLogisticMixture"),
                                          ("discretized_logistic", "DiscretizedLogistic")])
def test_config_option_builds_and_scores_frey_face(option, name, tmp_path):
    run = build_run(compose_train([
        "data=frey", f"model/likelihood={option}", "model.latent=2",
        "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]"], tmp_path))
    likelihood = run.model.decoder.likelihood
    assert type(likelihood).__name__ == name and likelihood.bins == 256
    assert run.model.decoder.net.out_shape == (likelihood.channels(1), 28, 20)
    run.datamodule.setup("fit")
    x, _ = run.datamodule.to_inputs(next(iter(run.datamodule.train_dataloader())))
    assert torch.isfinite(run.model.bound(x[:8]).elbo).all()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ArgumentError, match="n_components=0"):
        DiscretizedLogisticMixture(n_components=0)
    with pytest.raises(ArgumentError, match="bins=1"):
        DiscretizedLogistic(bins=1)
    with pytest.raises(ConfigError, match="model.decoder.likelihood.log_scale_min"):
        build_run(compose_train(["data=frey", "model/likelihood=logistic_mixture",
                             "model.decoder.likelihood.log_scale_min=-50"], tmp_path))
