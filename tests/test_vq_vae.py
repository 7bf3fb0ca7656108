"""The VQ-VAE (posteriors.vq, objectives.vq_vae, priors.codes) and its PixelCNN prior over codes
(pixelcnn): the straight-through gradient, the moving-average codebook against a hand
computation, the losses' values and the parameters each trains, the bound's KL = P log K, the
PixelCNN's causality by autograd, the fitted prior's round trip, and training on MNIST."""

import math

import pytest
import torch
from compose import SHARED_DATA, compose_train
from models import binary_images, small_vae

from vae_lightning.errors import ConfigError
from vae_lightning.objectives.vq_vae import VQVAE, vq_losses
from vae_lightning.pixelcnn import GatedPixelCNN, PixelCNNSampler, prior_bound
from vae_lightning.posteriors.vq import VectorQuantizer, as_latent, as_map
from vae_lightning.priors.codes import UniformCodes
from vae_lightning.train import build_run

SHAPE = (1, 4, 4)


def vq_model(ema=False, codes=4, code_dim=2, latent=6, beta=0.25):
    torch.manual_seed(0)
    return small_vae(SHAPE, latent=latent, posterior=VectorQuantizer(codes, code_dim, ema=ema),
                     prior=UniformCodes, objective=VQVAE(beta))


def test_the_layout_is_channel_major_and_as_latent_inverts_as_map():
    z = torch.arange(6.0)  # D = 2 channels of P = 3 positions: [c0 p0, c0 p1, c0 p2, c1 p0, ...]
    assert as_map(z, 2).tolist() == [[0, 3], [1, 4], [2, 5]]
    assert torch.equal(as_latent(as_map(z, 2)), z)


def test_codes_are_the_nearest_codebook_vectors_and_the_straight_through_gradient_is_copied():
    torch.manual_seed(0)
    family = VectorQuantizer(codes=5, code_dim=3)
    z_e = torch.randn(4, 12, requires_grad=True)
    q = family(z_e)
    distances = torch.cdist(as_map(z_e.detach(), 3), family.codebook.detach())
    assert torch.equal(q.codes, distances.argmin(-1))
    z = q.rsample()
    # z = z_e + (z_q - z_e).detach(): z_q to the float32 rounding of that sum, absolute where
    # z_q is near 0 (an unseeded run once found 1e-7 off at a code of 0.0057).
    assert torch.allclose(z, q.z_q, atol=1e-6) and torch.allclose(q.mean, family.lookup(q.codes))
    # f(z) = sum z^3: its gradient at z_q, 3 z_q^2, is the gradient that reaches z_e.
    z.pow(3).sum().backward()
    assert torch.allclose(z_e.grad, 3 * q.z_q.detach().pow(2))
    assert family.codebook.grad is None  # the straight-through path skips the codebook


def test_the_moving_average_update_matches_a_hand_computation():
    family = VectorQuantizer(codes=3, code_dim=2, ema=True, decay=0.5, epsilon=0.1,
                             init="uniform")
    e = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    family.codebook.copy_(e)
    family.cluster_size.fill_(1.0)
    family.embedding_sum.copy_(e)
    # Four vectors (0.2, 0), (0.8, 1.2), (1, 1), (-0.2, 0.2), channel-major: codes 0, 1, 1, 0.
    q = family(torch.tensor([[0.2, 0.8, 1.0, -0.2, 0.0, 1.2, 1.0, 0.2]]))
    assert q.codes.tolist() == [[0, 1, 1, 0]]
    assert q.z_q.tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]]  # the codebook before
    # N = 0.5 (1, 1, 1) + 0.5 (2, 2, 0) = (1.5, 1.5, 0.5); n = 3.5;
    # m = 0.5 e + 0.5 (sums (0, 0.2), (1.8, 2.2), (0, 0)) = (0, 0.1), (1.4, 1.6), (2.5, 2.5);
    # N~ = (N + 0.1) / (3.5 + 3 x 0.1) x 3.5 = (1.6, 1.6, 0.6) x 3.5 / 3.8.
    assert torch.allclose(family.cluster_size, torch.tensor([1.5, 1.5, 0.5]))
    smoothed = torch.tensor([1.6, 1.6, 0.6]) * 3.5 / 3.8
    expected = torch.tensor([[0.0, 0.1], [1.4, 1.6], [2.5, 2.5]]) / smoothed[:, None]
    assert torch.allclose(family.codebook, expected)
    assert torch.allclose(family.codebook[1], torch.tensor([0.95, 1.6 * 3.8 / (1.6 * 3.5)]))
    # No update in evaluation mode, nor without gradients (the probes made when composing).
    before = family.codebook.clone()
    with torch.no_grad():
        family(torch.randn(2, 8))
    family.eval()
    family(torch.randn(2, 8))
    assert torch.equal(family.codebook, before)


@pytest.mark.parametrize("ema", [False, True])
def test_the_codebook_starts_at_vectors_of_the_first_training_minibatch(ema):
    family = VectorQuantizer(codes=4, code_dim=2, ema=ema)
    family.eval()
    family(torch.randn(3, 6))  # evaluation: no start
    assert not family.initialised
    family.train()
    z_e = torch.randn(3, 6)  # 9 vectors for 4 codes: 4 distinct ones of them
    q = family(z_e)
    vectors = as_map(z_e, 2).reshape(-1, 2)
    assert family.initialised
    if not ema:  # (the moving averages have moved it since)
        assert torch.cdist(family.codebook.detach(), vectors).min(-1).values.max() == 0
    assert len(torch.unique(family.codebook.detach(), dim=0)) == 4
    # The vectors chosen quantize to themselves (z_q is read before the moving averages move).
    assert (as_map(q.z_q, 2) == as_map(z_e, 2)).all(-1).sum() >= 4


@pytest.mark.parametrize("ema", [False, True])
def test_the_losses_values_and_the_parameters_each_trains(ema):
    model = vq_model(ema=ema).eval()  # the moving averages stay put between the calls below
    x = binary_images(16, SHAPE)
    q = model.encoder(x)
    codebook, commitment = vq_losses(q)
    distance = (q.z_e - q.z_q).detach().pow(2).sum(-1)
    assert torch.allclose(codebook, distance) and torch.allclose(commitment, distance)
    encoder = list(model.encoder.net.parameters())
    decoder = list(model.decoder.parameters())

    def reached(term, params):
        grads = torch.autograd.grad(term.sum(), params, retain_graph=True, allow_unused=True)
        return [g is not None and bool(g.abs().sum() > 0) for g in grads]

    recon = model.decoder(q.rsample()).log_prob(x)
    assert all(reached(recon, encoder)) and all(reached(recon, decoder))  # straight through
    assert not any(reached(commitment, decoder))
    assert any(reached(commitment, encoder))
    if ema:  # the codebook is a buffer: no loss trains it
        assert not codebook.requires_grad and model.encoder.family.codebook not in set(
            model.parameters())
    else:
        assert reached(codebook, [model.encoder.family.codebook]) == [True]
        assert not any(reached(codebook, encoder + decoder))
        assert reached(commitment, [model.encoder.family.codebook]) == [False]
        assert reached(recon, [model.encoder.family.codebook]) == [False]
    # The loss: -recon + codebook (without ema) + beta commitment, averaged over the batch.
    loss, bound = model.objective.loss(model, x)
    expected = -bound.recon + 0.25 * distance + (0 if ema else distance)
    assert torch.allclose(loss, expected.mean())
    logged = model.objective.logged()
    assert torch.allclose(logged["commitment"], distance.mean())
    assert 1 <= logged["perplexity"] <= 4


def test_the_bound_is_the_reconstruction_minus_p_log_k():
    model = vq_model(codes=4, code_dim=2, latent=6)  # P = 3 positions, K = 4 codes
    x = binary_images(8, SHAPE)
    bound = model.bound(x)
    assert torch.allclose(bound.kl, torch.full((8,), 3 * math.log(4)))
    q = model.encoder(x)
    assert torch.allclose(bound.recon, model.decoder(q.z_q).log_prob(x))
    # The uniform prior draws code maps: each vector a codebook vector.
    z = model.prior.sample(5)
    assert z.shape == (5, 6)
    vectors = as_map(z, 2)
    assert torch.cdist(vectors, model.encoder.family.codebook.detach()).min(-1).values.max() == 0
    # What vae-eval says its estimates bound: log p(x) under this prior, which every use of
    # the codes pays for alike; not the number to compare with other families.
    from vae_lightning.log_likelihood import bound_of

    assert bound_of(model).startswith("log p(x) under the uniform training prior over code maps")
    assert "eval.fitted_prior=pixelcnn" in bound_of(model)


def test_parts_that_do_not_fit_the_quantizer_are_refused_when_composed(tmp_path):
    cases = [
        (["model/posterior=vq", "model.encoder.posterior.code_dim=4"], "does not have"),
        (["model=vq_vae", "model/posterior=gaussian"], "does not have"),  # the code prior
        (["model=vq_vae", "model/prior=normal"], "does not have"),
        (["model=vq_vae", "model.encoder.posterior.code_dim=3"],
         r"model.encoder.posterior.code_dim=3 must divide model.latent=3136"),
    ]
    for overrides, match in cases:
        with pytest.raises(ConfigError, match=match):
            build_run(compose_train(["data=mnist", *overrides], tmp_path))


def test_the_pixelcnn_is_causal_in_raster_order():
    torch.manual_seed(0)
    net = GatedPixelCNN(codes=3, channels=8, layers=4, kernel=3)
    rows, cols = 5, 6
    x = torch.randn(1, 3, rows, cols, requires_grad=True)
    logits = net(x)
    for r in range(rows):
        for c in range(cols):
            (grad,) = torch.autograd.grad(logits[0, :, r, c].sum(), x, retain_graph=True)
            seen = grad[0].abs().sum(0).flatten() > 0  # over the input channels
            i = r * cols + c
            assert not seen[i:].any(), f"position {(r, c)} sees a position at or after it"
            if c > 0:
                assert seen[i - 1]  # its left neighbour
            if r > 0:
                assert seen[i - cols]  # the one above
                # no blind spot: the position up and to the right is seen too
                assert c == cols - 1 or seen[i - cols + 1]


def code_maps(n, k=3, shape=(3, 3), seed=0):
    """Code maps whose positions all repeat the first one's code: entropy log K per map."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(k, (n, 1, 1), generator=g).expand(n, *shape).clone()


def test_the_pixelcnn_prior_fits_code_maps_round_trips_and_samples_codebook_vectors(one_thread):
    torch.manual_seed(0)
    codebook = torch.randn(3, 2)
    maps = code_maps(300)
    z = codebook[maps].flatten(1, 2).transpose(1, 2).flatten(1)  # [300, 18], channel-major
    sampler = PixelCNNSampler(shape=[3, 3], channels=16, layers=2, epochs=15, batch_size=50,
                              lr=3e-3)
    sampler.fit(z)
    nll = -sampler.log_prob(z).mean()
    uniform = 9 * math.log(3)  # the uniform prior's -log p(k): P log K
    assert nll < 0.2 * uniform and nll > math.log(3) - 0.3  # near the true entropy, log 3
    loaded = PixelCNNSampler(shape=[3, 3], channels=16, layers=2, epochs=15, batch_size=50,
                             lr=3e-3)
    loaded.load(sampler.state(), 18)
    assert torch.allclose(loaded.log_prob(z), sampler.log_prob(z))
    drawn = loaded.sample(40)
    codes = loaded.codes(drawn)
    assert torch.equal(loaded._codebook[codes].flatten(1, 2).transpose(1, 2).flatten(1), drawn)
    same = (codes == codes[:, :1, :1]).flatten(1).all(1).float().mean()
    assert same > 0.8  # the fitted structure: every position repeats the first
    with pytest.raises(ValueError, match="shape"):
        loaded.load(sampler.state(), 20)


def test_the_bound_with_a_fitted_prior_replaces_p_log_k_by_its_negative_log_likelihood():
    model = vq_model(codes=4, code_dim=2, latent=8).eval()  # 2 x 2 maps of 4 codes
    x = binary_images(64, SHAPE)
    z = model.encoder.location(model.encoder(x)).detach()
    sampler = PixelCNNSampler(shape=[2, 2], channels=8, layers=2, epochs=1, batch_size=64)
    sampler.fit(z)
    bound, uniform = prior_bound(model, sampler, x), model.bound(x)
    assert torch.allclose(bound.recon, uniform.recon)
    assert torch.allclose(bound.kl, -sampler.log_prob(z)) and (bound.kl > 0).all()


def test_the_pixelcnn_prior_scores_codes_no_training_image_used(one_thread):
    """p(k) is a distribution over every code map the decoder can read: fitted for a model, over
    all K of its codes, so a map holding a code that no training map held gets a finite
    log p(k) of its own (not that of the nearest code used); fitted without a model, over the
    codes it saw, such a map gets log p(k) = -inf, and the bound stays a bound."""
    model = vq_model(codes=4, code_dim=2, latent=8).eval()  # 2 x 2 maps of 4 codes
    codebook = model.encoder.posterior.codebook.detach()
    torch.manual_seed(1)
    train = torch.randint(0, 2, (200, 2, 2))  # codes 0 and 1 only
    as_z = lambda maps: codebook[maps].flatten(1, 2).transpose(1, 2).flatten(1)  # noqa: E731
    unseen = torch.tensor([[[3, 0], [1, 0]], [[0, 1], [1, 0]]])  # the first holds code 3
    options = dict(shape=[2, 2], channels=8, layers=2, epochs=2, batch_size=50)
    for_model = PixelCNNSampler(**options)
    assert for_model.check(model) is None
    for_model.fit(as_z(train))
    assert torch.equal(for_model._codebook, codebook)
    assert torch.equal(for_model.codes(as_z(unseen)), unseen)
    log_p = for_model.log_prob(as_z(unseen))
    assert torch.isfinite(log_p).all()
    # Code 3's own probability: the map with code 0 in its place scores otherwise.
    swapped = unseen.clone()
    swapped[0, 0, 0] = 0
    assert log_p[0] != for_model.log_prob(as_z(swapped))[0]
    alone = PixelCNNSampler(**options)
    alone.fit(as_z(train))
    assert len(alone._codebook) == 2
    log_p = alone.log_prob(as_z(unseen))
    assert log_p[0] == -math.inf and torch.isfinite(log_p[1])
    # A prior fitted over the codes used is not the model's: refused on load, to be refitted.
    for_model_again = PixelCNNSampler(**options)
    for_model_again.check(model)
    with pytest.raises(ValueError, match="not the model's codebook of 4"):
        for_model_again.load(alone.state(), 8)


@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(),
                    reason=f"needs MNIST under {SHARED_DATA}/mnist (../shared/data)")
def test_the_preset_trains_on_mnist_and_the_loss_falls(tmp_path, one_thread):
    from vae_lightning.data.idx import read_idx

    images = read_idx(SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz")[:2000]
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    torch.manual_seed(0)
    model = build_run(compose_train(["experiment=vq_vae_mnist", "model.optimizer.lr=1e-3"],
                                    tmp_path)).model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    held = torch.bernoulli(x[:200])
    with torch.no_grad():
        before = model.objective.loss(model, held)[0].item()
    for _ in range(150):
        batch = torch.bernoulli(x[torch.randint(len(x), (64,))])
        loss, _ = model.objective.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after, bound = model.objective.loss(model, held)
    assert after.item() < before - 100  # nats per image
    assert model.objective.logged()["perplexity"] > 2  # more than one or two codes in use
    assert torch.allclose(bound.kl, torch.full_like(bound.kl, 49 * math.log(64)))


def test_vae_eval_reports_the_bound_with_the_fitted_pixelcnn_prior(tmp_path, monkeypatch, capsys,
                                                                   one_thread):
    """vae-eval eval.fitted_prior=pixelcnn: refused, naming the command that fits it, before
    vae-sample has fitted one; afterwards eval.json holds the bound with the fitted prior,
    recon + log p(k(x)) per image, beside the uniform prior's recon - P log K. (vae-train,
    vae-eval and vae-sample run in this process, through their entry points.)"""
    import json

    from compose import mnist_like
    from test_hostile import run as run_command

    from vae_lightning import cli

    root = mnist_like(tmp_path / "data", train=300, test=100)
    run = tmp_path / "run"

    def command(app, *args):
        return run_command(app, list(args), monkeypatch, capsys, tmp_path)

    trained = command(cli.train, "experiment=vq_vae_mnist", f"data.root={root}",
                      "data.val_size=50", "trainer.max_steps=5", "callbacks.figures=null",
                      "callbacks.bound_curve=null",
                      "model.encoder.posterior.codes=8", f"hydra.run.dir={run}")
    assert trained.code == 0, trained.err[-2000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    evaluate = [f"ckpt_path={ckpt}", "eval.k=1", "eval.fitted_prior=pixelcnn",
                f"eval.data_root={root}"]
    refused = command(cli.evaluate, *evaluate)
    assert refused.code == 2 and "sampler=pixelcnn" in refused.err, refused.err
    fitted = command(cli.sample, f"ckpt_path={ckpt}", "sampler=pixelcnn",
                     "samplers.pixelcnn.epochs=1", "samplers.pixelcnn.layers=2",
                     "samplers.pixelcnn.channels=8", "n=4", f"data_root={root}")
    assert fitted.code == 0, fitted.err[-2000:]
    done = command(cli.evaluate, *evaluate)
    assert done.code == 0, done.err[-2000:]
    assert "with the fitted pixelcnn prior" in done.out
    assert "bounds on log p(x) under the uniform training prior" in done.out
    results = json.loads((run / "eval.json").read_text())
    assert results["bound_of"].startswith("log p(x) under the uniform training prior")
    with_prior = results["fitted_prior"]["elbo"]
    assert math.isfinite(with_prior["nats"]) and with_prior["bits_per_dim"] > 0
    # The same reconstruction under both priors (q is one-hot): the uniform bound is
    # recon - 49 log 8 (a 7 x 7 map of 8 codes), the fitted one recon + log p(k) <= recon.
    assert with_prior["nats"] <= results["elbo"]["nats"] + 49 * math.log(8) + 1e-6


@pytest.mark.parametrize("change, words", [
    ({"bogus": 1}, r"its options are not a PixelCNN's: got an unexpected keyword argument"),
    ({"shape": [4]}, r"its options are not a PixelCNN's: shape=\[4\] is not allowed"),
    ({"layers": 0}, r"its options are not a PixelCNN's: layers=0 is not allowed"),
    ({"channels": 10**6}, r"not one of 2 layers of 1000000 channels, as its options say"),
    ({"layers": 10**8}, r"not one of 100000000 layers of 8 channels, as its options say"),
])
def test_a_fitted_prior_s_options_are_the_file_s_and_refused_in_one_line(tmp_path, monkeypatch,
                                                                        change, words):
    """eval.fitted_prior reads the PixelCNN's options from its file, which is untrusted: an
    option the sampler does not take was a TypeError's traceback, one out of range an
    ArgumentError's; channels or layers far beyond the saved weights sized the network built
    before the weights were compared with it (a 10^6-channel net asked for terabytes). Now
    one ConfigError line each, and nothing is built at the file's word."""
    from vae_lightning.pixelcnn import fitted_prior
    from vae_lightning.samplers import digest, fitted_path, save

    model = vq_model(codes=4, code_dim=2, latent=8).eval()  # 2 x 2 maps of 4 codes
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"the checkpoint's bytes")
    z = model.encoder.location(model.encoder(binary_images(32, SHAPE))).detach()
    sampler = PixelCNNSampler(shape=[2, 2], channels=8, layers=2, epochs=1, batch_size=32)
    assert sampler.check(model) is None
    sampler.fit(z)
    path = fitted_path(ckpt, "pixelcnn")
    save(sampler, "pixelcnn", path, digest(ckpt), 8, 32)
    assert torch.equal(fitted_prior(str(ckpt), model).log_prob(z), sampler.log_prob(z))
    saved = torch.load(path, weights_only=True)
    saved["options"].update(change)
    torch.save(saved, path)

    def never(self, codes):
        raise AssertionError(f"a network of {self.channels} channels, {self.layers} layers built")

    monkeypatch.setattr(PixelCNNSampler, "_build", never)
    with pytest.raises(ConfigError, match=words):
        fitted_prior(str(ckpt), model)


def test_a_fitted_prior_for_a_model_without_code_maps_is_refused_without_a_command_that_fails(
        tmp_path):
    """eval.fitted_prior=pixelcnn on a model that is no VQ-VAE (a hierarchy) said "fit it
    first: vae-sample ... sampler=pixelcnn", a command that refuses such a model."""
    from vae_lightning.pixelcnn import fitted_prior

    with pytest.raises(ConfigError, match=r"eval.fitted_prior=pixelcnn: the PixelCNN is a prior "
                       r"over a VQ-VAE's code maps .* posterior is Gaussian, not a codebook; "
                       r"leave eval.fitted_prior out \(null\)\.$"):
        fitted_prior(str(tmp_path / "last.ckpt"), small_vae())


def test_a_pixelcnn_map_of_other_positions_than_the_model_s_is_refused_before_the_fit():
    """vae-sample sampler=pixelcnn samplers.pixelcnn.shape=[7,8] on a VQ-VAE of 49 positions of
    16-d codes (latent 784): 7 x 8 = 56 divides 784, so it passed the check, read 14-d
    vectors, and the fit ended in torch.cdist's "X1 and X2 must have the same number of
    columns" (a traceback, exit code 1). The positions are now checked against the model's
    (latent / code_dim), naming a shape that fits."""
    model = vq_model(codes=4, code_dim=2, latent=8).eval()  # 2 x 2 maps of 4 codes
    for bad in ([1, 2], [2, 4], [1, 1]):  # 2, 8 and 1 divide 8: 4-, 1- and 8-d "codes"
        with pytest.raises(ValueError, match=rf"shape=\[{bad[0]}, {bad[1]}\] is "
                                             r"not allowed: the model's code map: 4 positions "
                                             r"\(model.latent 8 / model.encoder.posterior."
                                             r"code_dim 2\), e.g. \[2, 2\]"):
            PixelCNNSampler(shape=bad, channels=8, layers=2, epochs=1).check(model)
    for good in ([2, 2], [1, 4], [4, 1]):
        assert PixelCNNSampler(shape=good, channels=8, layers=2, epochs=1).check(model) is None


def test_the_pixelcnn_map_is_the_decoder_s_by_default():
    """samplers.pixelcnn.shape defaulted to [7, 7] (MNIST's map): a Frey Face VQ-VAE (a 7 x 5
    map) was refused until the shape was given, and the "fit it first" command vae-eval prints
    (eval.fitted_prior=pixelcnn) left it out, so it was refused again. The default (null) is
    now the decoder's map; a flat latent's, its squarest layout."""
    frey, shape, latent = frey_map_vq()
    sampler = PixelCNNSampler(channels=8, layers=2, epochs=1, batch_size=16)
    assert "the model's code maps" in sampler.describe()
    assert sampler.check(frey) is None and sampler.shape == [7, 5]
    with torch.no_grad():
        z = frey.encoder.location(frey.encoder(torch.rand(16, *shape).bernoulli()))
    sampler.fit(z)
    assert sampler.sample(3).shape == (3, latent)
    flat = PixelCNNSampler(channels=8, layers=2, epochs=1)
    assert flat.check(vq_model(codes=4, code_dim=2, latent=8).eval()) is None
    assert flat.shape == [2, 2]
    with pytest.raises(ValueError, match=r"shape=None is not allowed: the code map's \[height, "
                                         r"width\] where no model gives it"):
        assert PixelCNNSampler(channels=8, layers=2, epochs=1).positions is None


def frey_map_vq():
    """A small VQ-VAE of Frey Face's 28 x 20 faces, whose decoder reads a 7 x 5 map of 2-d
    codes (two halvings), with its data shape and latent size."""
    from functools import partial

    from vae_lightning.conv_maps import ConvMapDecoder, ConvMapEncoder
    from vae_lightning.likelihoods import Bernoulli, Decoder
    from vae_lightning.module import VAE
    from vae_lightning.posteriors import Encoder

    shape, latent = (1, 28, 20), 2 * 7 * 5
    model = VAE(Encoder(partial(ConvMapEncoder, channels=[4, 4], blocks=0),
                        VectorQuantizer(4, 2), shape, latent),
                Decoder(partial(ConvMapDecoder, channels=[4, 4], blocks=0), Bernoulli(), shape,
                        latent),
                UniformCodes(latent), VQVAE(), latent=latent, data_shape=shape)
    return model.eval(), shape, latent
