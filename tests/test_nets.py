"""The networks of model/encoder and model/decoder: shapes for any data shape and any leading
batch dimensions, refusal of images the depth does not divide, no mixing across the batch, a
conv/resnet VAE that learns, every posterior and likelihood option through the YAMLs, and the
paper's MLP unchanged."""

import inspect
from functools import partial

import pytest
import torch
import yaml
from compose import CONF, compose_train, counts_likelihood, mnist_like, small_posterior
from models import binary_images
from torch import nn
from torch.testing import assert_close

from vae_lightning.args import ArgumentError
from vae_lightning.conv_nets import ConvDecoder, ConvEncoder, ResNetDecoder, ResNetEncoder
from vae_lightning.errors import ConfigError
from vae_lightning.likelihoods import Bernoulli, Decoder
from vae_lightning.module import VAE
from vae_lightning.nets import MLP
from vae_lightning.objectives.elbo import ELBO
from vae_lightning.posteriors import Encoder, Gaussian
from vae_lightning.priors import StandardNormal
from vae_lightning.train import build_run

TINY = {"channels": (2, 4)}  # depth 2: H and W divisible by 4
ENCODERS = [partial(ConvEncoder, **TINY), partial(ResNetEncoder, **TINY, blocks=1)]
DECODERS = [partial(ConvDecoder, **TINY), partial(ResNetDecoder, **TINY, blocks=1)]
NETS = ["conv", "resnet"]
SHAPES = [(1, 28, 20), (1, 28, 28), (3, 32, 32)]  # Frey Face, MNIST, CIFAR-10
LEADING = [(), (5,), (3, 5)]  # one input; a batch [B]; importance samples [k, B]
LATENT = 3


def _nets(data_shape, out_channels=2, **kwargs):
    """(name, network, in_shape, out_shape) of each encoder and decoder network."""
    c, h, w = data_shape
    for name, enc, dec in zip(NETS, ENCODERS, DECODERS):
        net = enc(data_shape, (2 * LATENT,), **kwargs)
        yield f"{name}-encoder", net, data_shape, (2 * LATENT,)
        out_shape = (out_channels, h, w)
        yield f"{name}-decoder", dec((LATENT,), out_shape, **kwargs), (LATENT,), out_shape


@pytest.mark.parametrize("leading", LEADING, ids=str)
@pytest.mark.parametrize("data_shape", SHAPES, ids=str)
def test_output_shape_for_any_data_shape_and_leading_dims(data_shape, leading):
    torch.manual_seed(0)
    for name, net, in_shape, out_shape in _nets(data_shape, out_channels=2 * data_shape[0]):
        y = net(torch.rand(*leading, *in_shape))
        assert y.shape == (*leading, *out_shape), name
        assert torch.isfinite(y).all(), name


@pytest.mark.parametrize("make", [*ENCODERS, *DECODERS],
                         ids=[f"{n}-{d}" for d in ("encoder", "decoder") for n in NETS])
@pytest.mark.parametrize("channels, data_shape, needs, fits", [
    ((2, 4, 8), (1, 28, 20), "a depth of 3 needs H and W divisible by 8", "at most 2 entries fit"),
    ((2, 4), (3, 30, 32), "a depth of 2 needs H and W divisible by 4", "at most 1 entry fits"),
    ((2,), (1, 27, 20), "a depth of 1 needs H and W divisible by 2", "H or W is odd"),
], ids=["frey-depth3", "30x32-depth2", "odd"])
def test_a_shape_the_depth_does_not_divide_is_refused(make, channels, data_shape, needs, fits):
    c, h, w = data_shape
    encoder = make.func in (ConvEncoder, ResNetEncoder)
    shapes = (data_shape, (2,)) if encoder else ((LATENT,), (2, h, w))
    with pytest.raises(ArgumentError) as refused:
        make(*shapes, channels=channels)
    message = str(refused.value)
    assert message.startswith(f"channels={list(channels)} is not allowed: {needs}, "
                              f"and the data are {h}x{w}: {fits}")
    assert message.endswith(f"({make.func.__name__}).")
    # The strided convolutions also take an odd kernel, which fits any shape; the ResNets not.
    assert ("use an odd kernel (kernel=5" in message) == (make.func in (ConvEncoder, ConvDecoder))


@pytest.mark.parametrize("cls", [ConvEncoder, ResNetEncoder, ConvDecoder, ResNetDecoder])
def test_no_channels_and_non_image_shapes_are_refused(cls):
    image = "in_shape" if cls in (ConvEncoder, ResNetEncoder) else "out_shape"
    shapes = {"in_shape": (1, 8, 8), "out_shape": (1, 8, 8)}
    with pytest.raises(ArgumentError, match=r"^channels=\[\] is not allowed: expected at least"):
        cls(**shapes, channels=[])
    with pytest.raises(ArgumentError, match=rf"^{image}=\(64,\) is not allowed: expected an image"):
        cls(**{**shapes, image: (64,)})
    with pytest.raises(ArgumentError, match=r"^activation='swish' is not allowed: expected one of"):
        cls(**shapes, activation="swish")


def test_config_refuses_a_depth_the_data_do_not_divide(tmp_path):
    overrides = ["model/encoder=conv", "model/decoder=resnet",
                 "model.encoder.net.channels=[4,8,16]"]
    with pytest.raises(ConfigError, match=r"model\.encoder\.net\.channels=\[4, 8, 16\] is not "
                                          r"allowed: a depth of 3 .* the data are 28x20"):
        build_run(compose_train(overrides, tmp_path))


@pytest.mark.parametrize("data_shape", [(1, 8, 8), (3, 8, 4)], ids=str)
def test_no_mixing_across_the_batch_and_eval_computes_what_train_does(data_shape):
    """d out[i] / d x[j] = 0 for i != j (no batch statistics), and a point's output does not
    depend on its batch-mates, in training mode or in evaluation mode."""
    torch.manual_seed(0)
    for name, net, in_shape, _ in _nets(data_shape, channels=(8, 16)):  # no dead ReLU outputs
        x = torch.rand(2, 3, *in_shape, requires_grad=True)
        y = net(x)
        (grad,) = torch.autograd.grad(y[0, 0].sum(), x)
        assert grad[0, 0].abs().sum() > 0, name
        grad[0, 0] = 0.0
        assert torch.equal(grad, torch.zeros_like(grad)), name
        with torch.no_grad():
            assert_close(net(x[1, 2]), y[1, 2], msg=name)
            assert_close(net(x[1:, :1]), y[1:, :1], msg=name)
            assert torch.equal(net.eval()(x), y.detach()), name


@pytest.mark.parametrize("encoder, decoder", zip(ENCODERS, DECODERS), ids=NETS)
def test_composed_conv_vae_learns_binary_images(encoder, decoder):
    """Composed in Python as a user would: the bound improves well beyond the pixel marginals'
    44.4 nats (seeds 0-4 gain 7 to 12 nats in these 60 steps)."""
    shape, latent, channels = (1, 8, 8), 2, (8, 16)
    torch.manual_seed(0)
    model = VAE(Encoder(partial(encoder, channels=channels), Gaussian(), shape, latent),
                Decoder(partial(decoder, channels=channels), Bernoulli(), shape, latent),
                StandardNormal(latent), ELBO(),
                optimizer=partial(torch.optim.Adam, lr=1e-2), latent=latent, data_shape=shape)
    x = binary_images(128, shape)
    optimizer = model.configure_optimizers()
    losses = []
    for _ in range(60):
        loss, bound = model.objective.loss(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert bound.elbo.shape == (128,)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 3.0, losses  # nats per image


POSTERIORS = sorted(p.stem for p in (CONF / "model/posterior").glob("*.yaml"))
# The likelihoods of images: those of counts score integer feature vectors, which these
# convolutional networks do not take (tests/test_counts.py trains them with the MLP).
LIKELIHOODS = sorted(p.stem for p in (CONF / "model/likelihood").glob("*.yaml")
                     if not counts_likelihood(p.stem))
# Every posterior and every likelihood, each at least once: the posterior sees only the encoder's
# output and the likelihood only the decoder's channels, so pairs cover what the full product
# would (tests/test_combinations.py takes the product with the MLP).
PAIRS = [(POSTERIORS[i % len(POSTERIORS)], LIKELIHOODS[i % len(LIKELIHOODS)])
         for i in range(max(len(POSTERIORS), len(LIKELIHOODS)))]


@pytest.fixture(scope="module")
def frey_batch(tmp_path_factory):
    """A minibatch of the default data (Frey Face, 1 x 28 x 20)."""
    run = build_run(compose_train([], tmp_path_factory.mktemp("frey")))
    run.datamodule.setup("fit")
    x, _ = run.datamodule.to_inputs(next(iter(run.datamodule.train_dataloader())))
    return x[:8]


@pytest.mark.parametrize("posterior, likelihood", PAIRS, ids=[f"{p}-{q}" for p, q in PAIRS])
@pytest.mark.parametrize("net", NETS)
def test_every_posterior_and_likelihood_trains_with_the_network(net, posterior, likelihood,
                                                                frey_batch, tmp_path):
    """Built from the YAMLs: a finite loss and a gradient reaching every parameter."""
    small = [o for o in small_posterior(posterior)  # this test's networks, not the option's
             if not o.startswith(("model/encoder=", "model/decoder="))]
    overrides = [f"model/encoder={net}", f"model/decoder={net}", *small,
                 f"model/likelihood={likelihood}", "model.latent=2",
                 "model.encoder.net.channels=[4,8]", "model.decoder.net.channels=[4,8]",
                 *([f"model.{part}.net.blocks=1" for part in ("encoder", "decoder")]
                   if net == "resnet" else [])]
    torch.manual_seed(0)
    model = build_run(compose_train(overrides, tmp_path)).model
    assert model.data_shape == (1, 28, 20)
    assert type(model.encoder.net).__name__.lower().startswith(net)
    assert type(model.decoder.net).__name__.lower().startswith(net)
    loss, bound = model.objective.loss(model, frey_batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all()
    # A MADE's output layer starts at zero (an IAF starts as the identity map): its hidden
    # and context layers get their gradient once it has moved; the output layer gets one now.
    after_zero = {name for name, _ in model.named_parameters()
                  if ".steps." in name and ".out." not in name}
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert name in after_zero or p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("part", ["encoder", "decoder"])
@pytest.mark.parametrize("net", NETS)
def test_yaml_sets_every_argument_to_its_default_with_a_comment(part, net):
    """The YAML and the constructor agree: every argument but the shapes is a key, at the
    constructor's default, and every key says what it is."""
    path = CONF / "model" / part / f"{net}.yaml"
    node = yaml.safe_load(path.read_text())["net"]
    cls = {"conv": {"encoder": ConvEncoder, "decoder": ConvDecoder},
           "resnet": {"encoder": ResNetEncoder, "decoder": ResNetDecoder}}[net][part]
    assert node["_target_"] == f"vae_lightning.conv_nets.{cls.__name__}" and node["_partial_"]
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                if name not in ("in_shape", "out_shape")}
    keys = {k: v for k, v in node.items() if not k.startswith("_")}
    assert keys == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    lines = [line for line in path.read_text().splitlines()
             if line.startswith("  ") and not line.startswith("  _target_:")]
    assert lines and all("  # " in line for line in lines), path


def test_mlp_is_unchanged():
    """The paper's MLP: the same layers, parameter names, initial numbers and outputs."""
    torch.manual_seed(0)
    mlp = MLP((1, 3, 4), (4,), hidden=(8, 6), activation="tanh")
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(),
                              nn.Linear(6, 4))
    assert list(mlp.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight",
                                      "4.bias"]
    for (name, p), q in zip(mlp.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name
    x = torch.rand(2, 5, 1, 3, 4)
    assert torch.equal(mlp(x), reference(x.flatten(-3)))
    assert mlp(x).shape == (2, 5, 4)
    torch.manual_seed(0)
    paper = MLP((1, 3, 4), (2, 3, 4), hidden=(8,), init_std=0.01)
    assert list(paper.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(p.std() < 0.02 for p in paper.parameters())
    assert paper(torch.rand(7, 1, 3, 4)).shape == (7, 2, 3, 4)


@pytest.mark.parametrize("make", [
    lambda **kw: MLP((1, 28, 28), (100,), hidden=(200,), **kw),
    lambda **kw: ConvEncoder((1, 28, 28), (100,), **kw),
    lambda **kw: ConvDecoder((50,), (1, 28, 28), **kw),
])
def test_glorot_uniform_initialisation(make):
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)) for every weight (torch's fans for
    convolutions), every bias 0; the uniform's standard deviation is a / sqrt(3)."""
    torch.manual_seed(0)
    net = make(init="glorot_uniform")
    for layer in net.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            a = (6 / (fan_in + fan_out)) ** 0.5
            assert torch.all(layer.bias == 0)
            assert layer.weight.abs().max() <= a and layer.weight.abs().max() > 0.9 * a
            if layer.weight.numel() > 5000:
                assert layer.weight.std().item() == pytest.approx(a / 3**0.5, rel=0.05)


def test_init_normal_and_its_refusals():
    torch.manual_seed(0)
    normal = MLP((1, 3, 4), (4,), hidden=(400,), init="normal", init_std=0.01)
    assert normal[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert normal[0].bias.std().item() == pytest.approx(0.01, rel=0.2)
    torch.manual_seed(0)
    implied = MLP((1, 3, 4), (4,), hidden=(400,), init_std=0.01)  # configs before init
    assert all(torch.equal(p, q) for p, q in zip(normal.parameters(), implied.parameters()))
    with pytest.raises(ValueError, match="init_std=None.*give a standard deviation"):
        MLP((1, 3, 4), (4,), init="normal")
    with pytest.raises(ValueError, match="init_std=0.01.*init=glorot_uniform takes no"):
        MLP((1, 3, 4), (4,), init="glorot_uniform", init_std=0.01)


# The HVAE authors' network (Caterini et al. 2018, after Salimans et al. 2015) on MNIST: 5x5
# stride-2 convolutions 28 -> 14 -> 7 -> 4, a 450-unit layer, softplus.
AUTHORS = {"kernel": 5, "channels": (16, 32, 32), "hidden": (450,), "activation": "softplus"}


def _layer_sizes(net, x, kind):
    """The ``(H, W)`` each layer of type ``kind`` of ``net`` outputs on ``x``, in order, and the
    shape of what the first ``nn.Flatten`` receives (``None`` if it has none)."""
    sizes, flattened = [], []
    hooks = [layer.register_forward_hook(lambda _, __, y: sizes.append(tuple(y.shape[-2:])))
             for layer in net if isinstance(layer, kind)]
    hooks += [layer.register_forward_hook(lambda _, args, __: flattened.append(args[0].shape))
              for layer in net if isinstance(layer, nn.Flatten)]
    y = net(x)
    for hook in hooks:
        hook.remove()
    return y, sizes, flattened[0] if flattened else None


@pytest.mark.parametrize("leading", LEADING, ids=str)
def test_authors_network_shapes(leading):
    """Encoder: 28 -> 14 -> 7 -> 4, a 32 x 4 x 4 map (512 features) before the flatten, then
    450 hidden units; the decoder's transposed convolutions 4 -> 7 -> 14 -> 28 to (C', 28, 28)."""
    torch.manual_seed(0)
    encoder = ConvEncoder((1, 28, 28), (2 * LATENT,), **AUTHORS)
    y, sizes, flattened = _layer_sizes(encoder, torch.rand(*leading, 1, 28, 28), nn.Conv2d)
    assert sizes == [(14, 14), (7, 7), (4, 4)]
    assert flattened[1:] == (32, 4, 4)
    assert [layer.out_features for layer in encoder if isinstance(layer, nn.Linear)] == [450, 6]
    assert y.shape == (*leading, 2 * LATENT) and torch.isfinite(y).all()
    decoder = ConvDecoder((LATENT,), (2, 28, 28), **AUTHORS)
    x, sizes, _ = _layer_sizes(decoder, torch.randn(*leading, LATENT), nn.ConvTranspose2d)
    assert sizes == [(7, 7), (14, 14), (28, 28)]
    assert [layer.out_features for layer in decoder if isinstance(layer, nn.Linear)] == [450, 512]
    assert x.shape == (*leading, 2, 28, 28) and torch.isfinite(x).all()


@pytest.mark.parametrize("data_shape, channels", [
    ((1, 28, 20), (2, 4, 8)),  # 28x20 -> 14x10 -> 7x5 -> 4x3, which kernel 4 refuses at depth 3
    ((3, 30, 30), (2, 4)),  # 30 -> 15 -> 8
    ((1, 27, 5), (2, 4, 4, 4)),  # odd sizes and a level of 1 x 1
], ids=str)
@pytest.mark.parametrize("kernel", [3, 5])
def test_an_odd_kernel_fits_any_shape_and_the_decoder_retraces_the_encoders_sizes(
        data_shape, channels, kernel):
    c, h, w = data_shape
    torch.manual_seed(0)
    options = {"kernel": kernel, "channels": channels, "hidden": (8, 6)}
    encoder = ConvEncoder(data_shape, (2 * LATENT,), **options)
    y, down, flattened = _layer_sizes(encoder, torch.rand(5, *data_shape), nn.Conv2d)
    expected, size = [], (h, w)
    for _ in channels:  # ceil(H / 2) per level
        size = (-(-size[0] // 2), -(-size[1] // 2))
        expected.append(size)
    assert down == expected and flattened[1:] == (channels[-1], *expected[-1])
    assert y.shape == (5, 2 * LATENT)
    assert [layer.out_features for layer in encoder if isinstance(layer, nn.Linear)] == [8, 6, 6]
    decoder = ConvDecoder((LATENT,), (2 * c, h, w), **options)
    x, up, _ = _layer_sizes(decoder, torch.randn(3, 5, LATENT), nn.ConvTranspose2d)
    assert up == [*expected[-2::-1], (h, w)]  # the encoder's sizes, back to the image's
    features = channels[-1] * expected[-1][0] * expected[-1][1]
    assert [(layer.in_features, layer.out_features) for layer in decoder
            if isinstance(layer, nn.Linear)] == [(LATENT, 6), (6, 8), (8, features)]
    assert x.shape == (3, 5, 2 * c, h, w)


@pytest.mark.parametrize("cls", [ConvEncoder, ConvDecoder])
@pytest.mark.parametrize("kernel", [1, 2, 6])
def test_a_kernel_other_than_4_or_odd_is_refused(cls, kernel):
    with pytest.raises(ArgumentError) as refused:
        cls(in_shape=(1, 28, 28) if cls is ConvEncoder else (LATENT,),
            out_shape=(2,) if cls is ConvEncoder else (1, 28, 28), kernel=kernel)
    message = str(refused.value)
    assert message.startswith(f"kernel={kernel} is not allowed: expected 4 ")
    assert "or an odd size >= 3" in message and message.endswith(f"({cls.__name__}).")


def test_config_refuses_an_even_kernel_other_than_4(tmp_path):
    overrides = ["model/encoder=conv", "model/decoder=conv", "model.decoder.net.kernel=6"]
    with pytest.raises(ConfigError, match=r"model\.decoder\.net\.kernel=6 is not allowed: "
                                          r"expected 4 .* or an odd size >= 3"):
        build_run(compose_train(overrides, tmp_path))


def test_authors_network_has_the_hand_counted_parameters():
    """Encoder to 2 x 64 outputs, decoder from 64 latents to 1 channel: the parameters of each
    layer counted from its sizes (weights and a bias per output)."""
    latent, k, (c1, c2, c3), (hidden,) = 64, 5, AUTHORS["channels"], AUTHORS["hidden"]
    features = c3 * 4 * 4  # 28 -> 14 -> 7 -> 4
    assert features == 512

    def conv(n_in, n_out):  # the same count for a convolution and its transpose
        return n_in * n_out * k * k + n_out

    def affine(n_in, n_out):
        return n_in * n_out + n_out

    encoder = conv(1, c1) + conv(c1, c2) + conv(c2, c3) + affine(features, hidden) + affine(
        hidden, 2 * latent)
    decoder = affine(latent, hidden) + affine(hidden, features) + conv(c3, c2) + conv(
        c2, c1) + conv(c1, 1)
    assert (encoder, decoder) == (416 + 12_832 + 25_632 + 230_850 + 57_728,
                                  29_250 + 230_912 + 25_632 + 12_816 + 401)

    def count(net):
        return sum(p.numel() for p in net.parameters())

    assert count(ConvEncoder((1, 28, 28), (2 * latent,), **AUTHORS)) == encoder
    assert count(ConvDecoder((latent,), (1, 28, 28), **AUTHORS)) == decoder


@pytest.mark.parametrize("init", [None, "glorot_uniform"])
def test_conv_defaults_are_unchanged(init):
    """kernel=4 and hidden=() build today's layers: the same parameter names, initial numbers and
    outputs as without the options, and as the layers written out by hand."""
    shape, c = (1, 28, 20), 2  # Frey Face, depth 2: 7 x 5 at the smallest

    def build(cls, *shapes, **options):
        torch.manual_seed(0)
        return cls(*shapes, channels=(8, 16), init=init, **options)

    def same(a, b):
        assert list(a.state_dict()) == list(b.state_dict())
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name

    torch.manual_seed(0)
    today = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 4, 2, 1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 5, 2 * LATENT))
    encoder = build(ConvEncoder, shape, (2 * LATENT,))
    same(encoder, build(ConvEncoder, shape, (2 * LATENT,), kernel=4, hidden=()))
    x = torch.rand(4, *shape)
    if init is None:
        same(encoder, today)
        assert torch.equal(encoder(x), today(x))
    torch.manual_seed(0)
    today = nn.Sequential(nn.Linear(LATENT, 16 * 7 * 5), nn.Unflatten(1, (16, 7, 5)), nn.ReLU(),
                          nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ReLU(),
                          nn.ConvTranspose2d(8, c, 4, 2, 1))
    decoder = build(ConvDecoder, (LATENT,), (c, 28, 20))
    same(decoder, build(ConvDecoder, (LATENT,), (c, 28, 20), kernel=4, hidden=[]))
    z = torch.randn(4, LATENT)
    if init is None:
        same(decoder, today)
        assert torch.equal(decoder(z), today(z))


def _network_options():
    """Every network option a user chooses for the encoder and the decoder (the YAMLs of
    model/encoder and model/decoder): a network added as its YAML is tested here with no
    edit of this file."""
    return sorted((part, p.stem) for part in ("encoder", "decoder")
                  for p in (CONF / "model" / part).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("part, option", _network_options(), ids=lambda v: str(v))
def test_every_network_option_trains_and_scores_importance_samples(part, option, tmp_path):
    """Composed from its YAML beside the defaults (with the parts it works with only, as
    test_config composes each option): one training step reaches every parameter with a
    finite gradient, and the importance-weighted log p(x) (samples [k, B] through the decoder)
    is finite. The other tests here name the networks they train (NETS), so a new network
    was trained by none of them (newcomer walkthrough ten); this one takes every option from its
    YAML."""
    from test_config import _option_overrides

    torch.manual_seed(0)
    overrides = _option_overrides(f"model/{part}", option)
    if "data=mnist" in overrides:  # the VQ-VAE's map networks: MNIST-format files of our own
        overrides += [f"data.root={mnist_like(tmp_path / 'data')}", "data.val_size=50"]
    cfg = compose_train(overrides, tmp_path)
    run = build_run(cfg)
    model, datamodule = run.model, run.datamodule
    datamodule.setup("fit")
    x, _ = datamodule.to_inputs(next(iter(datamodule.train_dataloader())))
    x = x[:6]  # Frey Face has no labels: a conditional network is given classes of its own
    y = torch.arange(6) % model.classes if model.classes else None
    with model.given(y):
        loss, bound = model.objective.loss(model, x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(bound.elbo).all()
    for name, p in getattr(model, part).named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        iw = model.log_likelihood(x, k=4, **({"y": y} if y is not None else {}))
    assert iw.shape == (6,) and torch.isfinite(iw).all()
