"""Samplers fitted after training (vae-sample sampler=gmm|flow): each fits its points (its
samples have their moments, the flow beats a single Gaussian on held-out points), is saved beside
the checkpoint in a file of tensors and plain values and used again while the checkpoint and
its options stay, fitted anew otherwise; a file that is not one, or does not fit, is refused in
one line; the training data are found and checked as vae-eval finds and checks its split."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from compose import compose_train, sample_config
from scipy.io import savemat

from vae_lightning import errors, samplers
from vae_lightning.errors import CheckpointError, ConfigError, DataError, UnwritableError
from vae_lightning.samplers import FlowSampler, GaussianMixture
from vae_lightning.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _clusters(n=3000, seed=0):
    """Points of three well-separated 2-d Gaussian clusters with weights 0.5, 0.3, 0.2."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]])
    which = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, True, generator=g)
    return centres[which] + 0.5 * torch.randn(n, 2, generator=g), which


def _banana(n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g)
    return torch.stack([a, 0.5 * a**2 + 0.3 * torch.randn(n, generator=g)], 1)


def test_the_gaussian_mixture_fits_the_clusters_and_samples_their_weights(caplog):
    z, _ = _clusters()
    gmm = GaussianMixture(n_components=3)
    with caplog.at_level("INFO"):
        gmm.fit(z)
    # Said before and after: scikit-learn's EM is silent while it runs (minutes, it looked hung).
    assert f"Fitting a 3-component Gaussian mixture (full covariances) by EM to {len(z)} points" \
        in caplog.text and "Gaussian mixture fitted in" in caplog.text
    torch.manual_seed(0)
    drawn = gmm.sample(20000)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]])
    share = torch.bincount(torch.cdist(drawn, centres).argmin(1), minlength=3) / len(drawn)
    torch.testing.assert_close(share, torch.tensor([0.5, 0.3, 0.2]), atol=0.03, rtol=0)
    torch.testing.assert_close(drawn.mean(0), z.mean(0), atol=0.1, rtol=0)


def test_too_many_components_name_the_option():
    with pytest.raises(ValueError, match="n_components=20 is not allowed: at most the 10 points"):
        GaussianMixture(n_components=20).fit(torch.randn(10, 2))


def test_the_flow_fits_better_than_one_gaussian_on_held_out_points():
    train_z, test_z = _banana(2000, 0), _banana(2000, 1)
    flow = FlowSampler(length=3, hidden=[32], epochs=30, batch_size=128, lr=3e-3)
    flow.fit(train_z)
    u = (test_z - flow._loc) / flow._scale
    with torch.no_grad():
        flow_ll = (flow._flow.log_prob(u) - flow._scale.log().sum()).mean().item()
    gaussian = torch.distributions.MultivariateNormal(train_z.mean(0), torch.cov(train_z.T))
    assert flow_ll > gaussian.log_prob(test_z).mean().item() + 0.2
    torch.manual_seed(0)
    drawn = flow.sample(20000)
    torch.testing.assert_close(drawn.mean(0), test_z.mean(0), atol=0.08, rtol=0)


@pytest.mark.parametrize("make", [lambda: GaussianMixture(n_components=3),
                                  lambda: GaussianMixture(n_components=2, covariance="diag"),
                                  lambda: FlowSampler(length=2, hidden=[16], epochs=2)],
                         ids=["gmm", "gmm_diag", "flow"])
def test_a_saved_sampler_draws_what_the_fitted_one_draws(make, tmp_path):
    z, _ = _clusters(500)
    fitted, path = make(), tmp_path / "last.ckpt.s.pt"
    fitted.fit(z)
    samplers.save(fitted, "s", path, "abc", latent=2, points=len(z))
    loaded = make()
    assert samplers.load(loaded, "s", path, "abc", latent=2) is None
    torch.manual_seed(3)
    first = fitted.sample(50)
    torch.manual_seed(3)
    torch.testing.assert_close(loaded.sample(50), first)
    assert samplers.load(make(), "s", path, "other", latent=2) == (
        "the checkpoint changed since it was fitted")
    assert samplers.load(make(), "t", path, "abc", latent=2) == "its options differ from these"


def test_a_file_that_is_not_a_fitted_sampler_is_refused_in_one_line(tmp_path):
    path = tmp_path / "last.ckpt.gmm.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="is not a fitted sampler"):
        samplers.load(GaussianMixture(), "gmm", path, "abc", 2)
    torch.save({"format": samplers.FORMAT, "version": samplers.VERSION}, path)
    with pytest.raises(CheckpointError, match="is not a fitted sampler"):
        samplers.load(GaussianMixture(), "gmm", path, "abc", 2)


@pytest.mark.parametrize("change, words", [
    (lambda s: s.update(means=torch.zeros(3, 5)), "means has shape [3, 5], not [3, 2]"),
    (lambda s: s.update(weights=torch.tensor([0.5, 0.5, 0.5])), "not a probability vector"),
    (lambda s: s["covariances"].mul_(-1), "not positive definite"),
    (lambda s: s["means"].fill_(float("nan")), "NaN or infinite"),
    (lambda s: s.pop("means"), "it holds the tensors"),
])
def test_a_fitted_file_whose_tensors_do_not_fit_is_refused(change, words, tmp_path):
    z, _ = _clusters(300)
    gmm, path = GaussianMixture(n_components=3), tmp_path / "f.pt"
    gmm.fit(z)
    samplers.save(gmm, "gmm", path, "abc", 2, len(z))
    saved = torch.load(path, weights_only=True)
    change(saved["state"])
    torch.save(saved, path)
    with pytest.raises(CheckpointError) as err:
        samplers.load(GaussianMixture(n_components=3), "gmm", path, "abc", 2)
    assert words in str(err.value) and "refit=true" in str(err.value)


# ----------------------------------------------------------------------------- vae-sample
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = compose_train(["data=frey", "model.latent=2", "model.encoder.net.hidden=[32]",
                         "model.decoder.net.hidden=[32]", "trainer.max_epochs=1", "logger=none",
                         "callbacks.figures.n_points=0", "trainer.enable_progress_bar=false"],
                        run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg)["checkpoint"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["gmm", "flow"])
def test_vae_sample_fits_saves_and_reuses_the_sampler(name, checkpoint, tmp_path):
    args = [f"ckpt_path={checkpoint}", f"sampler={name}", "n=12", "device=cpu",
            "samplers.flow.epochs=2", "samplers.flow.hidden=[16]"]
    saved = samplers.fitted_path(checkpoint, name)
    saved.unlink(missing_ok=True)
    out = sample_config([*args, f"output_dir={tmp_path / 'a'}"])()
    first = np.load(out / "samples.npy", allow_pickle=False)
    assert first.shape == (12, 1, 28, 20) and np.isfinite(first).all()
    content = torch.load(saved, weights_only=True)
    assert content["sampler"] == name and content["latent"] == 2 and content["points"] == 1565
    assert content["checkpoint_sha256"] == samplers.digest(checkpoint)
    written = saved.stat().st_mtime_ns
    again = sample_config([*args, f"output_dir={tmp_path / 'b'}"])()  # loaded, not fitted
    assert saved.stat().st_mtime_ns == written
    np.testing.assert_array_equal(np.load(again / "samples.npy"), first)
    sample_config([*args, f"output_dir={tmp_path / 'c'}", "refit=true"])()
    assert saved.stat().st_mtime_ns != written
    written = saved.stat().st_mtime_ns
    other = "samplers.gmm.n_components=3" if name == "gmm" else "samplers.flow.epochs=1"
    sample_config([*args, other, f"output_dir={tmp_path / 'd'}"])()  # other options: fitted anew
    assert saved.stat().st_mtime_ns != written
    assert torch.load(saved, weights_only=True)["options"] != content["options"]


@pytest.mark.parametrize("mean, error, words", [
    (1e300, CheckpointError, ["drew z with 8 values that are not finite", "refit=true"]),
    (3e38, errors.NonFiniteLossError, ["are not finite", "Their z came from the fitted sampler",
                                      "|z| up to 3e+38", "refit=true"]),
])
def test_a_fitted_sampler_s_non_finite_draws_are_blamed_on_its_file(mean, error, words,
                                                                      checkpoint, tmp_path,
                                                                      monkeypatch):
    """A fitted file whose means are finite as float64 but not as the float32 z it draws
    (1e300), or so large that the decoder overflows (3e38: here a decoder whose output
    overflows beyond |z| = 1e30), is named with refit=true, and nothing is written: both were
    blamed on the model's weights alone ("its largest parameter is 0.7"), with exit code 3, as
    a model that diverged."""
    from vae_lightning.module import VAE

    args = [f"ckpt_path={checkpoint}", "sampler=gmm", "n=4", "device=cpu",
            "samplers.gmm.n_components=3", f"output_dir={tmp_path}"]
    saved = samplers.fitted_path(checkpoint, "gmm")
    images = VAE.images
    monkeypatch.setattr(VAE, "images", lambda self, z, *rest: images(self, z, *rest).masked_fill(
        (z.abs() > 1e30).any(-1)[:, None, None, None], float("nan")))
    try:
        sample_config(args)()
        content = torch.load(saved, weights_only=True)
        content["state"]["means"].fill_(mean)
        torch.save(content, saved)
        (tmp_path / "samples.npy").unlink()
        with pytest.raises(error) as refused:
            sample_config(args)()
    finally:
        saved.unlink(missing_ok=True)
    message = str(refused.value)
    assert str(saved) in message, message
    for word in words:
        assert word in message, (word, message)
    assert not (tmp_path / "samples.npy").exists()


def test_vae_sample_writes_a_fitted_samplers_images_into_their_own_folder(checkpoint):
    out = sample_config([f"ckpt_path={checkpoint}", "sampler=gmm", "n=4", "device=cpu"])()
    assert out.name == "gmm" and out.parent.name == "samples"
    assert (out / "samples.png").stat().st_size > 1000


def test_an_unknown_sampler_is_one_config_error(checkpoint):
    with pytest.raises(ConfigError, match="sampler='nope' is not allowed: prior .* gmm, flow"):
        sample_config([f"ckpt_path={checkpoint}", "sampler=nope"])


@pytest.mark.parametrize("override, words", [
    ("n=0", "n=0 is not allowed"), ("sampler=nope", "sampler='nope' is not allowed"),
    ("device=tpu", "device='tpu' is not allowed")])
def test_errors_name_the_top_level_keys_as_typed(checkpoint, override, words):
    """vae-sample's options are top-level keys: a message names ``n=0``, never ``sample.n``
    or ``.n``, which the command line would not take."""
    with pytest.raises(ConfigError) as refused:
        sample_config([f"ckpt_path={checkpoint}", override])
    message = str(refused.value)
    assert words in message and not re.search(r"(^|\s)(sample)?\.\w+=", message), message


def test_other_training_data_are_refused_unless_allowed(checkpoint, tmp_path):
    """A frey_rawface.mat of other faces as data_path: the training split is not the one the
    checkpoint recorded."""
    faces = np.random.default_rng(0).integers(0, 256, (560, 1965), dtype=np.uint8)
    savemat(tmp_path / "frey_rawface.mat", {"ff": faces})
    args = [f"ckpt_path={checkpoint}", "sampler=gmm", "n=2", "device=cpu", "refit=true",
            f"data_path={tmp_path / 'frey_rawface.mat'}", f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(DataError, match="the train split's images or labels differ"):
        sample_config(args)()
    assert not (tmp_path / "out").exists()
    sample_config([*args, "allow_other_data=true"])()
    assert (tmp_path / "out" / "samples.npy").is_file()


def test_a_checkpoint_folder_that_cannot_be_written_is_refused_before_the_fit(checkpoint,
                                                                             tmp_path):
    """The checkpoint on a read-only filesystem: the fitted sampler could not be saved beside
    it, so nothing is fitted."""
    import shutil
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        shutil.copy(checkpoint, folder / "last.ckpt")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with pytest.raises(UnwritableError, match="not writable"):
            sample_config([f"ckpt_path={folder / 'last.ckpt'}", "sampler=gmm", "n=2", "device=cpu",
                       f"output_dir={tmp_path / 'out'}"])()
        assert not (tmp_path / "out").exists()
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_the_prior_sampler_draws_what_the_model_draws(checkpoint, tmp_path):
    from vae_lightning.module import VAE

    out = sample_config([f"ckpt_path={checkpoint}", "n=5", "device=cpu",
                     f"output_dir={tmp_path}"])()
    model = VAE.load_from_checkpoint(checkpoint)
    torch.manual_seed(0)
    np.testing.assert_allclose(np.load(out / "samples.npy"), model.sample(5).numpy(), rtol=1e-6)
    assert math.isfinite(float(np.load(out / "samples.npy").sum()))


@pytest.mark.parametrize("model, words", [
    (["model=svae", "model.latent=3"], "the unit sphere"),
    (["model=gumbel", "model.latent=4", "model.encoder.posterior.categories=2"],
     "one-hot blocks")])
def test_a_fitted_sampler_is_refused_for_a_latent_space_that_is_not_all_of_r_n(model, words,
                                                                              tmp_path):
    """A GMM or flow draws z anywhere in R^latent; the S-VAE's codes lie on the sphere and
    relaxed categorical codes on one-hot blocks, so the decoder never saw such draws: refused
    in one line, before any fit; the prior's own draws still work."""
    cfg = compose_train(["data=frey", *model, "model.encoder.net.hidden=[8]",
                         "model.decoder.net.hidden=[8]", "trainer.max_epochs=1", "logger=none",
                         "callbacks.figures.n_points=0", "trainer.enable_progress_bar=false"],
                        tmp_path / "run")
    checkpoint = train(cfg)["checkpoint"]
    for name in ("gmm", "flow"):
        with pytest.raises(ConfigError, match=f"sampler={name}: .*{words}.*use sampler=prior"):
            sample_config([f"ckpt_path={checkpoint}", f"sampler={name}", "n=4",
                           "device=cpu"])()
        assert not samplers.fitted_path(checkpoint, name).exists()
    out = sample_config([f"ckpt_path={checkpoint}", "n=4", "device=cpu",
                         f"output_dir={tmp_path / 'prior'}"])()
    assert np.isfinite(np.load(out / "samples.npy")).all()


def test_a_vq_vae_s_code_maps_take_the_pixelcnn_not_a_density_on_r_n(tmp_path):
    """A VQ-VAE's decoder reads only code maps of its codebook: a GMM or flow fitted to them
    draws z between the codes, and a traversal sweeps a coordinate off them, where the decoder
    never read anything; refused in one line as for the S-VAE's sphere (vae-sample wrote their
    images with exit code 0), before any fit; the prior's draws still work (and the PixelCNN,
    whose draws are code maps, stays allowed: tests/test_vq_vae.py)."""
    from compose import mnist_like

    root = mnist_like(tmp_path / "data", train=120, test=30)
    vq = ["experiment=vq_vae_mnist", f"data.root={root}", "data.val_size=30",
          "trainer.max_steps=2", "callbacks.bound_curve=null", "callbacks.figures.n_points=0",
          "model.encoder.posterior.codes=8", "logger=none", "trainer.enable_progress_bar=false"]
    with pytest.raises(ConfigError, match="traversals=true: .*the code maps of its codebook"):
        train(compose_train([*vq, "callbacks.figures.traversals=true"], tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()
    checkpoint = train(compose_train(vq, tmp_path / "run"))["checkpoint"]
    base = [f"ckpt_path={checkpoint}", "n=4", "device=cpu", f"data_root={root}"]
    for name in ("gmm", "flow"):
        with pytest.raises(ConfigError, match=f"sampler={name}: .*R\\^784.*the code maps of its "
                           "codebook.*sampler=pixelcnn.*use sampler=prior"):
            sample_config([*base, f"sampler={name}", f"output_dir={tmp_path / name}"])()
        assert not samplers.fitted_path(checkpoint, name).exists()
        assert not (tmp_path / name / "samples.npy").exists()
    with pytest.raises(ConfigError, match="traverse=true: .*the code maps of its codebook"):
        sample_config([*base, "traverse=true", f"output_dir={tmp_path / 'traverse'}"])()
    assert not (tmp_path / "traverse" / "samples.npy").exists()
    out = sample_config([*base, f"output_dir={tmp_path / 'prior'}"])()
    assert np.isfinite(np.load(out / "samples.npy")).all()


def test_a_fit_shows_its_progress_minibatch_by_minibatch(capsys):
    """Fitting by likelihood (the flow, the PixelCNN) shows a bar over every minibatch of every
    epoch: a PixelCNN's epoch on 50,000 code maps takes minutes on a CPU, and only an epoch's
    end was said."""
    torch.manual_seed(0)
    FlowSampler(length=1, hidden=[8], epochs=2, batch_size=32).fit(torch.randn(100, 2))
    err = capsys.readouterr().err
    assert "fitting FlowSampler (2 epochs)" in err and "8/8" in err, err


def test_a_folder_of_ones_own_is_not_overwritten_and_an_earlier_draw_is(checkpoint, tmp_path):
    """output_dir holding a samples.npy vae-sample did not write (no samples.json beside it) is
    refused before the model is loaded, the file untouched; a folder of an earlier draw is
    replaced, and the record names what drew the files."""
    import json

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "samples.npy").write_bytes(b"my own array")
    args = [f"ckpt_path={checkpoint}", "n=3", "device=cpu"]
    with pytest.raises(ConfigError, match=re.escape(
            f"output_dir={mine}: {mine / 'samples.npy'} exists and is not the output of an "
            "earlier vae-sample (no record of one, samples.json, beside it: written by another "
            "program, or by a vae-sample older than the record)")):
        sample_config([*args, f"output_dir={mine}"])()
    assert (mine / "samples.npy").read_bytes() == b"my own array"
    assert sorted(p.name for p in mine.iterdir()) == ["samples.npy"]
    (mine / "samples.json").mkdir()  # a name it writes that is not a file
    with pytest.raises(ConfigError, match="samples.json is a directory, not a file"):
        sample_config([*args, f"output_dir={mine}"])()

    out = tmp_path / "out"
    sample_config([*args, f"output_dir={out}"])()
    record = json.loads((out / "samples.json").read_text())
    assert record["n"] == 3 and record["seed"] == 0 and record["sampler"] == "prior"
    assert record["files"] == ["samples.npy", "samples.png"]
    assert record["checkpoint_sha256"] == samplers.digest(checkpoint)
    sample_config([*args, "n=5", "seed=1", f"output_dir={out}"])()  # its own: replaced
    assert np.load(out / "samples.npy").shape[0] == 5
    assert json.loads((out / "samples.json").read_text())["seed"] == 1
    # The run's own samples/ folder is vae-sample's, whether or not a record is there (those
    # written before the record was kept have none).
    sample_config(args)()
    default = Path(checkpoint).parents[1] / "samples"
    (default / "samples.json").unlink()
    sample_config([*args, "n=4"])()
    assert np.load(default / "samples.npy").shape[0] == 4


def test_a_mixture_with_a_component_on_points_that_do_not_vary_names_n_components():
    """Locations that repeat (ten distinct points, each 50 times) leave a component with a
    singular covariance: scikit-learn's ValueError was a traceback; now the option to lower."""
    from vae_lightning.args import ArgumentError, within

    z = (torch.randn(10, 3, generator=torch.Generator().manual_seed(0)) * 1e5).repeat(50, 1)
    with pytest.raises(ArgumentError, match=r"samplers.gmm.n_components=10 is not allowed: EM "
                       r"left a component on points of the 500 that do not vary .* diag "
                       r"covariance is singular; expected fewer components"):
        within("samplers.gmm", lambda: GaussianMixture(n_components=10, covariance="diag").fit(z))


def test_the_points_a_sampler_is_fitted_to_are_the_locations_alone(monkeypatch):
    """The fitted samplers read q(z|x)'s locations only: its standard deviations are not
    computed beside them (half the memory of a VQ-VAE's 50,000 MNIST code maps); vae-encode's
    statistics still hold both."""
    from models import binary_images, small_vae

    from vae_lightning.sample import posterior_locations, posterior_statistics

    model = small_vae().eval()
    batches = [(binary_images(4), torch.zeros(4, dtype=torch.long))] * 2
    both = posterior_statistics(model, batches)
    assert both[1] is not None and both[1].shape == (8, model.latent)

    def no_scales(q):
        raise AssertionError("the standard deviations were computed")

    monkeypatch.setattr(model.encoder.posterior, "stddev", no_scales)
    assert torch.equal(posterior_locations(model, batches), both[0])
