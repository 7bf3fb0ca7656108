"""The Python API's inputs (``inference.Inference``): float pixels outside [0, 1] or values that
are not finite are refused in one ValueError naming them, for a model of pixel values; a model
of real feature vectors (a Gaussian likelihood with an identity mean, data=array's float
vectors) takes any finite values."""

import math

import pytest
import torch
from models import binary_images, small_vae

from vae_lightning.likelihoods import Beta, Gaussian


@pytest.mark.parametrize("likelihood", [None, Gaussian(), Beta()],
                         ids=["bernoulli", "gaussian_sigmoid", "beta"])
def test_pixels_outside_the_unit_interval_are_refused(likelihood):
    """Before: -x scored better than the images themselves, x * 255 about -2e8, NaN a NaN."""
    torch.manual_seed(0)
    model = small_vae(likelihood=likelihood).eval()
    x = binary_images(4).clamp(0.01, 0.99)
    for bad, words in ((-x, r"values in \[-0.99, -0.01\]"), (x * 255, r"values in \[2.55, "),
                       (x + 0.02, r"values in \[0.03, 1.01\]")):
        for call in (lambda v: model.log_likelihood(v, k=2), model.encode, model.reconstruct):
            with pytest.raises(ValueError, match=words + r".*pixels in \[0, 1\]"):
                call(bad)
    nan = x.clone()
    nan[0, 0, 0, 0] = math.nan
    for bad in (nan, x.masked_fill(x > 0.5, math.inf)):
        with pytest.raises(ValueError, match="not finite"):
            model.log_likelihood(bad, k=2)
    assert model.log_likelihood(x, k=2).shape == (4,)  # in [0, 1]: as before
    assert model.encode(torch.zeros(1, 1, 3, 4)).batch_shape == (1,)
    assert model.encode(torch.ones(1, 1, 3, 4)).batch_shape == (1,)


def test_a_model_of_real_feature_vectors_takes_any_finite_values():
    """data=array's float vectors [N, D] are served as [B, 1, 1, D] of any real values, to a
    Gaussian likelihood with an identity mean (experiment=m1_m2_mnist's M2)."""
    torch.manual_seed(0)
    model = small_vae(data_shape=(1, 1, 6), likelihood=Gaussian("identity")).eval()
    x = 5 * torch.randn(4, 1, 1, 6)
    assert torch.isfinite(model.log_likelihood(x, k=2)).all()
    assert model.encode(-x).batch_shape == (4,)
    with pytest.raises(ValueError, match="not finite"):
        model.log_likelihood(x.masked_fill(x > 0, math.nan), k=2)


@pytest.fixture(scope="module")
def conditional_runs(tmp_path_factory):
    """Two model=cvae checkpoints of 2 steps on the same 8 x 8 images: one trained on class
    labels 0..1 (data.labels_key), one on condition vectors of 2 numbers (data.condition)."""
    import numpy as np
    from compose import compose_train

    from vae_lightning.train import train

    root = tmp_path_factory.mktemp("cvae")
    rng = np.random.default_rng(0)
    path = root / "xc.npz"
    np.savez(path, x=rng.random((40, 8, 8), dtype=np.float32),
             c=rng.standard_normal((40, 2)).astype(np.float32), t=np.arange(40) % 2)
    common = ["data=array", f"data.path={path}", "data.batch_size=10", "model=cvae",
              "model.classes=2", "model.latent=1", "model.encoder.net.hidden=[4]",
              "model.decoder.net.hidden=[4]", "trainer.max_steps=2", "trainer.accelerator=cpu",
              "logger=none", "callbacks.bound_curve=null", "callbacks.figures.n_points=0",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    return {kind: train(compose_train([*common, f"data.{key}={member}"], root / kind))["checkpoint"]
            for kind, key, member in (("labels", "labels_key", "t"),
                                      ("vectors", "condition", "c"))}


def test_vae_sample_takes_the_kind_of_y_the_model_was_trained_on(conditional_runs, tmp_path):
    """Before: a label model took any vector (y=[0, 50]: far off one-hot), and a vector model
    took a label (read as its unit vector) or no y (unit vectors in turn)."""
    from compose import sample_config

    from vae_lightning.errors import ConfigError

    def sample(kind, *y):
        return sample_config([f"ckpt_path={conditional_runs[kind]}", "n=2", "device=cpu",
                              f"output_dir={tmp_path / kind}", *y])()

    with pytest.raises(ConfigError, match=r"y=\[0.0, 50.0\]: the model of .* was trained on "
                                          r"class labels, not condition vectors; give a class"):
        sample("labels", "y=[0,50]")
    for y, words in ((["y=1"], "y=1"), ([], "y=null")):
        with pytest.raises(ConfigError, match=words + r": the model of .* was trained on "
                                                      r"condition vectors \(data.condition='c'\)"):
            sample("vectors", *y)
    assert sample("labels", "y=1").is_dir() and sample("labels").is_dir()
    assert sample("vectors", "y=[0.5,-1.5]").is_dir()


def test_a_count_that_is_not_a_positive_integer_and_a_truth_value_for_y_are_refused():
    """model.sample(-1) was a RuntimeError from deep inside; y=True was taken as class 1."""
    import conditional_gaussian as cg

    model = cg.model()
    for n in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match=r"sample: n=.*an integer >= 1"):
            model.sample(n)
    with pytest.raises(ValueError, match="y=True is a truth value"):
        model.sample(2, y=True)
    assert model.sample(3, y=1).shape == (3, *cg.SHAPE)


def test_a_loaded_model_takes_the_kind_of_y_it_was_trained_on():
    """A loaded conditional model knows whether its run gave it class labels or condition
    vectors (rebuild.trained_on, from the run config's data.condition): the other kind is
    refused (a label model took any vector; a vector model took a label as its unit vector,
    and without y drew the unit vectors in turn); a model built in Python takes either."""
    import conditional_gaussian as cg

    from vae_lightning.rebuild import trained_on

    assert trained_on({"data": {"condition": "c"}}) == "vectors"
    assert trained_on({"data": {"condition": None}}) == "labels"
    assert trained_on({}) is None
    model = cg.model()
    assert model.sample(2, y=torch.tensor([0.5, 0.5])).shape == model.sample(2, y=1).shape
    model.trained_on = "labels"
    with pytest.raises(ValueError, match="trained on class labels, not condition vectors"):
        model.sample(2, y=torch.tensor([0.0, 1e6]))
    model.sample(2, y=1)
    model.trained_on = "vectors"
    for y in (1, None, torch.tensor([0, 1])):
        with pytest.raises(ValueError, match="trained on condition vectors"):
            model.sample(2, y=y)
    assert model.sample(2, y=torch.tensor([0.5, 0.5])).shape[0] == 2


def test_the_kind_of_y_is_read_from_its_numbers_whatever_holds_them():
    """A NumPy array of floats is condition vectors and a float is not a class, as a tensor of
    them is: a vector model refused a NumPy float vector as a class label, and a label model
    took y=3.0 for a condition vector (an error about vector shapes); a NumPy or 0-d tensor
    integer is one class for all, as an int is (it was refused as labels of shape [])."""
    import conditional_gaussian as cg
    import numpy as np

    model = cg.model()
    model.trained_on = "vectors"
    vector = np.array([0.5, 0.5])
    assert model.sample(2, y=vector).shape == model.sample(2, y=torch.tensor(vector)).shape
    model.trained_on = "labels"
    for y in (3.0, np.float64(1.0), np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match="trained on class labels, not condition vectors"):
            model.sample(2, y=y)
    torch.manual_seed(0)
    expected = model.sample(3, y=1)
    for y in (np.int64(1), torch.tensor(1)):
        torch.manual_seed(0)
        assert torch.equal(model.sample(3, y=y), expected)
    for y in (np.bool_(True), np.array([True, False])):
        with pytest.raises(ValueError, match="is a truth value"):
            model.sample(2, y=y)


def _conditional_colour_model():
    """A conditional VAE (CVAE parts) of 3-channel 2 x 2 images, 2 classes."""
    from functools import partial

    from vae_lightning.conditional import ClassNormal, Conditioned
    from vae_lightning.likelihoods import Bernoulli, Decoder
    from vae_lightning.module import VAE
    from vae_lightning.nets import MLP
    from vae_lightning.objectives.elbo import ELBO
    from vae_lightning.posteriors import Encoder, Gaussian

    torch.manual_seed(0)
    net = partial(Conditioned, net=partial(MLP, hidden=(4,)), classes=2)
    shape = (3, 2, 2)
    return VAE(Encoder(net, Gaussian(), shape, 2), Decoder(net, Bernoulli(), shape, 2),
               ClassNormal(2, classes=2), ELBO(), classes=2, data_shape=shape).eval()


def test_one_image_of_several_channels_is_one_image_not_a_batch_of_its_channels():
    """One image [C, H, W] was counted by len(x), its channels: log_likelihood of one RGB image
    gave 3 copies of its estimate, a conditional model refused y=1 for one RGB image ('3 labels
    given for a batch of 1') and for one image's estimate ('1 labels given for a batch of k'),
    and interpolate between two images of a conditional model refused its labels."""
    model = small_vae(data_shape=(3, 2, 2)).eval()
    x = torch.rand(4, 3, 2, 2)
    torch.manual_seed(0)
    one = model.log_likelihood(x[0], k=5)
    torch.manual_seed(0)
    assert one.shape == () and torch.equal(one, model.log_likelihood(x[:1], k=5)[0])
    conditional = _conditional_colour_model()
    assert conditional.encode(x[0], y=1).batch_shape == ()
    assert conditional.reconstruct(x[0], y=1).shape == (3, 2, 2)
    assert conditional.log_likelihood(x[0], k=5, y=1).shape == ()
    path = conditional.interpolate(x[0], x[1], steps=4, y=1)
    assert path.shape == (4, 3, 2, 2)
    torch.testing.assert_close(path[0], conditional.reconstruct(x[0], y=1))
    assert conditional.interpolate(x[:2], x[2:], steps=3, y=1).shape == (3, 2, 3, 2, 2)


def test_latent_points_of_another_dtype_are_decoded_as_float32():
    """A NumPy array of z (float64, as np.load gives vae-encode's locations) or integer z was a
    'mat1 and mat2 must have the same dtype' RuntimeError."""
    import numpy as np

    model = small_vae().eval()
    z = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    expected = model.images(z)
    for other in (z.numpy().astype(np.float64), z.double(), z.long()):
        torch.testing.assert_close(model.images(other), expected)


def test_latent_points_that_are_not_finite_are_refused_as_images_are():
    """decode / images of a NaN or infinite z gave NaN images without a word (x is refused so):
    the docs' model.decode(q.mean) of a Cauchy posterior (q.mean is NaN) among them. One
    ValueError naming the count and the location to use; finite z as before."""
    from vae_lightning.posteriors import StudentT
    from vae_lightning.priors import VampPrior

    torch.manual_seed(0)
    model = small_vae(posterior=StudentT(df=1.0), prior=VampPrior).eval()
    q = model.encode(binary_images(3))
    assert torch.isnan(q.mean).all()
    for bad in (q.mean, torch.tensor([[0.0, math.inf]]), torch.tensor([[-math.inf, math.nan]])):
        count = int((~torch.isfinite(bad)).sum())
        for call in (model.decode, model.images):
            with pytest.raises(ValueError, match=rf"z holds {count} values that are not finite"
                                                 r".*model\.encoder\.location\(q\)"):
                call(bad)
    z = model.encoder.location(q)
    images = model.images(z)
    assert images.shape == (3, *model.data_shape) and torch.isfinite(images).all()
    torch.testing.assert_close(images, model.reconstruct(binary_images(3)))


def test_counts_and_shapes_the_methods_cannot_use_are_one_value_error():
    """interpolate's steps (-1: a RuntimeError; 2.5: a TypeError from linspace; 0 or 1: no path),
    log_likelihood's k=1.5 (a TypeError), x1 and x2 of different batch sizes (broadcast
    silently, or a RuntimeError) and NumPy images for interpolate (an AttributeError) were not
    the methods' ValueErrors; an empty batch's estimates are an empty tensor (was a reshape
    RuntimeError), and a NumPy integer is a count."""
    import numpy as np

    model = small_vae().eval()
    x = binary_images(4)
    for steps in (-1, 0, 1, 2.5, True):
        with pytest.raises(ValueError, match=rf"interpolate: steps={steps!r}; .*integer >= 2"):
            model.interpolate(x[0], x[1], steps=steps)
    for k, chunk in ((1.5, None), (0, None), (2, 0), (2, 1.0)):
        with pytest.raises(ValueError, match=r"log_likelihood: (k|chunk)=.*an integer >= 1"):
            model.log_likelihood(x, k=k, chunk=chunk)
    with pytest.raises(ValueError, match=r"x1 has shape \[2, 1, 3, 4\] and x2 \[1, 1, 3, 4\]"):
        model.interpolate(x[:2], x[2:3])
    assert model.interpolate(x[0].numpy(), x[1].numpy(), steps=3).shape == (3, 1, 3, 4)
    assert model.log_likelihood(x[:0], k=3).shape == (0,)
    assert model.sample(np.int64(2)).shape == (2, 1, 3, 4)


def test_a_condition_vector_beyond_float32_is_refused_naming_y(conditional_runs, tmp_path):
    """y=[1e39, 0] is finite as Python reads it and inf as the model does: it was refused
    later as "a condition vector holds a value that is not finite", naming no y."""
    from compose import sample_config

    from vae_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"y=\[1e\+39, 0.0\]: a condition vector of this "
                                          r"model is 2 finite numbers .*float32"):
        sample_config([f"ckpt_path={conditional_runs['vectors']}", "n=2", "device=cpu",
                       f"output_dir={tmp_path}", "y=[1e39,0]"])()


def test_log_likelihood_of_grey_pixels_under_a_binary_likelihood_warns():
    """README's stand-in images (torch.rand) scored by a Bernoulli model gave numbers without a
    word; they are not log-probabilities (grey pixels have no mass under p(x|z)). A warning
    says so, as training does; binary pixels, and a model of grey ones, are scored quietly."""
    import warnings

    model = small_vae((1, 4, 4))  # Bernoulli
    with pytest.warns(UserWarning, match="not a log probability in nats. Binarize them"):
        grey = model.log_likelihood(torch.full((3, 1, 4, 4), 0.5), k=2)
    assert torch.isfinite(grey).all()  # still the number asked for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.log_likelihood(binary_images(3, (1, 4, 4)), k=2)
        small_vae((1, 4, 4), likelihood=Beta()).log_likelihood(torch.full((3, 1, 4, 4), 0.5), k=2)


def test_bound_checks_its_input_as_the_other_methods_do():
    """``model.bound(x)`` (the per-point ELBO, an anomaly score) took any input: a batch of
    vectors [N, D] was an IndexError from deep inside, and a point holding a NaN scored NaN,
    silently (newcomer walkthrough twelve). It refuses both as ``log_likelihood`` does, names
    the points that are not finite, and scores one point as a batch of one."""
    from vae_lightning.likelihoods import Gaussian

    torch.manual_seed(0)
    model = small_vae(data_shape=(1, 1, 6), likelihood=Gaussian(mean_activation="identity"))
    model.eval()
    x = torch.randn(5, 1, 1, 6)
    with pytest.raises(ValueError, match=r"x has shape \[5, 6\]: this model takes vectors of 6 "
                                         r"values, served as \[1, 1, 6\] \(a batch \[N, 6\] is "
                                         r"x.reshape\(-1, 1, 1, 6\)\)"):
        model.bound(x.reshape(5, 6))
    nan = x.clone()
    nan[1, 0, 0, 3] = math.nan
    nan[4] = math.inf
    for call in (model.bound, lambda v: model.log_likelihood(v, k=2)):
        with pytest.raises(ValueError, match=r"x holds 7 values that are not finite \(NaN or "
                                             r"inf\), in 2 of the batch's 5 points \(index 1, 4"):
            call(nan)
    torch.manual_seed(1)
    whole = model.bound(x)
    torch.manual_seed(1)
    assert torch.equal(whole.elbo, model.batch_bound(x).elbo)  # the same draws, checked or not
    torch.manual_seed(1)
    one = model.bound(x[0])
    torch.manual_seed(1)
    assert one.elbo.dim() == 0 and one.elbo == model.batch_bound(x[:1]).elbo[0]
    with pytest.raises(ValueError, match="not conditional on a label"):
        model.bound(x, torch.zeros(5, dtype=torch.long))


def test_a_seed_makes_the_scores_the_same_on_every_call_and_leaves_the_global_stream():
    """Scores for a threshold moved by a nat between runs of the same script (the estimates
    draw z at random; newcomer walkthrough twelve): ``seed=`` draws them from its own stream,
    the same on every call, and leaves the global one as it was."""
    torch.manual_seed(0)
    model = small_vae().eval()
    x = binary_images(6)
    state = torch.get_rng_state()
    first, again = (model.log_likelihood(x, k=4, seed=3) for _ in range(2))
    bounds = [model.bound(x, seed=3).elbo for _ in range(2)]
    assert torch.equal(first, again) and torch.equal(*bounds)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(model.log_likelihood(x, k=4, seed=4), first)
    torch.manual_seed(3)
    assert torch.equal(model.log_likelihood(x, k=4), first)  # as the global stream seeded so
    for seed in (-1, True, 1.5):
        with pytest.raises(ValueError, match="seed"):
            model.log_likelihood(x, k=4, seed=seed)
