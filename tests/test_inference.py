"""The trained model in use: encode, decode, sample, reconstruct, interpolate, log_likelihood,
Lightning's predict_step, and the vae-sample command."""

import lightning as L
import numpy as np
import pytest
import torch
from compose import REPO, compose_train
from test_hostile import no_traceback
from test_hostile import run as command
from torch.distributions import Independent, Normal

from vae_lightning import VAE, cli
from vae_lightning.objectives import importance_weighted
from vae_lightning.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "logger=none", "callbacks.figures.n_points=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A Frey Face VAE with a 2-d latent space trained for an epoch, loaded from its checkpoint
    (the tests check what the model's methods compute, whatever its training)."""
    directory = tmp_path_factory.mktemp("run")
    results = train(compose_train(["data=frey", "model.latent=2", "trainer.max_epochs=1",
                                   *QUIET], directory))
    return directory, VAE.load_from_checkpoint(results["checkpoint"])


@pytest.fixture(scope="module")
def faces():
    from vae_lightning.data import FreyFaceDataModule

    dm = FreyFaceDataModule()
    dm.setup("test")
    return dm, dm.evaluation_data("test")[:6]


def test_encode_and_decode_are_the_posterior_and_the_likelihood(run, faces):
    _, model = run
    _, x = faces
    q = model.encode(x)
    assert isinstance(q, Independent) and isinstance(q.base_dist, Normal)
    assert q.batch_shape == (6,) and q.event_shape == (2,)
    p = model.decode(q.mean)
    assert p.event_shape == (1, 28, 20) and p.batch_shape == (6,)
    assert p.log_prob(x).shape == (6,)


def test_sample_draws_from_the_prior_through_the_decoder(run):
    _, model = run
    torch.manual_seed(0)
    means = model.sample(5)
    torch.manual_seed(0)
    assert torch.equal(means, model.decoder(model.prior.sample(5)).mean)
    torch.manual_seed(0)
    draws = model.sample(5, mean=False)
    assert draws.shape == means.shape == (5, 1, 28, 20) and not torch.equal(draws, means)


def test_reconstruct_decodes_the_posterior_mean(run, faces):
    _, model = run
    _, x = faces
    expected = model.decoder(model.encoder(x).mean).mean
    assert torch.equal(model.reconstruct(x), expected)
    assert expected.shape == x.shape


def test_interpolate_runs_between_the_posterior_means(run, faces):
    _, model = run
    _, x = faces
    path = model.interpolate(x[0], x[1], steps=5)
    assert path.shape == (5, 1, 28, 20)
    z0, z1 = model.encode(x[0]).mean, model.encode(x[1]).mean
    torch.testing.assert_close(path[0], model.decode(z0).mean)
    torch.testing.assert_close(path[-1], model.decode(z1).mean)
    torch.testing.assert_close(path[2], model.decode((z0 + z1) / 2).mean)
    batch = model.interpolate(x[:2], x[2:4], steps=3)
    assert batch.shape == (3, 2, 1, 28, 20)


def test_log_likelihood_is_eval_s_estimate_and_at_least_the_elbo(run, faces):
    _, model = run
    _, x = faces
    torch.manual_seed(3)
    ours = model.log_likelihood(x, k=200, chunk=64)
    torch.manual_seed(3)
    elbo, iw = importance_weighted(model, x, 200, 200)
    torch.testing.assert_close(ours, iw, rtol=1e-5, atol=1e-3)
    assert (ours >= elbo - 1e-3).all()


def test_predict_step_gives_posterior_moments_and_the_elbo(run, faces):
    _, model = run
    dm, _ = faces
    predictions = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            use_distributed_sampler=False).predict(model, datamodule=dm)
    z_mean = torch.cat([p["z_mean"] for p in predictions])
    assert z_mean.shape == (200, 2) and torch.cat([p["elbo"] for p in predictions]).shape == (200,)
    assert (torch.cat([p["z_std"] for p in predictions]) > 0).all()


def test_inputs_the_model_would_misread_are_refused_naming_what_fits(run, faces):
    """A label for a model without any, integer pixels (read as values up to 255) and tensors of
    another shape are one clear ValueError each, not a silent wrong answer or a matmul error;
    one image, boolean pixels and the right shapes still work."""
    _, model = run
    _, x = faces
    for call in (lambda: model.sample(4, y=3), lambda: model.encode(x, y=1),
                 lambda: model.log_likelihood(x, k=2, y=torch.zeros(6, dtype=torch.long))):
        with pytest.raises(ValueError, match="not conditional on a label"):
            call()
    with pytest.raises(ValueError, match=r"torch.uint8.*x.float\(\) / 255"):
        model.encode((x * 255).to(torch.uint8))
    for bad in (x.flatten(1), x[:, :, :20], x[None]):
        with pytest.raises(ValueError, match=r"shape .*\[1, 28, 20\]"):
            model.reconstruct(bad)
    with pytest.raises(ValueError, match=r"z has shape \[6, 3\].* 2 numbers"):
        model.decode(torch.zeros(6, 3))
    assert model.encode(x[0]).event_shape == (2,)  # one image
    assert model.encode(x > 0.5).batch_shape == (6,)  # binary pixels as booleans
    assert model.decode(torch.zeros(3, 6, 2)).batch_shape == (3, 6)


def test_vae_sample_writes_a_grid_and_the_array(run, tmp_path, monkeypatch, capsys):
    """vae-sample (= python -m vae_lightning.sample) in this process; tests/test_install.py runs
    the installed script."""
    directory, _ = run
    checkpoint = directory / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    proc = command(cli.sample, [f"ckpt_path={checkpoint}", "n=10", f"output_dir={tmp_path / 'out'}",
                                f"hydra.run.dir={tmp_path / 'h'}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 0, proc.err[-2000:]
    samples = np.load(tmp_path / "out" / "samples.npy", allow_pickle=False)
    assert samples.shape == (10, 1, 28, 20) and samples.dtype == np.float32
    assert 0 <= samples.min() and samples.max() <= 1  # sigmoid means of the Gaussian decoder
    assert (tmp_path / "out" / "samples.png").stat().st_size > 1000
    model = VAE.load_from_checkpoint(checkpoint)
    torch.manual_seed(0)
    np.testing.assert_allclose(samples, model.sample(10).numpy(), rtol=1e-6)


def test_vae_sample_without_a_checkpoint_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the command sets it: restored after the test
    proc = command(cli.sample, [f"hydra.run.dir={tmp_path / 'h'}"], monkeypatch, capsys, tmp_path)
    assert proc.code == 2 and proc.err.startswith("error: ckpt_path is required")
    no_traceback(proc)
    assert str(REPO) not in proc.err


def test_load_datamodule_gives_the_run_s_own_data_options(tmp_path):
    """Real images for a loaded model, without repeating the run's data options by hand: the
    data module of the checkpoint's data set with its binarization and split, set up for the
    split asked; data that are not the checkpoint's are refused, as vae-eval refuses them."""
    from compose import mnist_like

    from vae_lightning import load_datamodule
    from vae_lightning.errors import UserError

    root = mnist_like(tmp_path / "data", train=120, test=30)
    results = train(compose_train([f"data.root={root}", "data=mnist", "data.binarize=static",
                                   "data.val_size=20", "trainer.max_steps=2", *QUIET],
                                  tmp_path / "run"))
    ckpt = results["checkpoint"]
    data = load_datamodule(ckpt, data_root=str(root))
    assert type(data).__name__ == "MNISTDataModule"
    assert (data.binarize, data.val_size) == ("static", 20)
    x, y = data.to_inputs(next(iter(data.test_dataloader())))
    assert x.shape == (30, 1, 28, 28) and set(x.unique().tolist()) <= {0.0, 1.0}
    model = VAE.load_from_checkpoint(ckpt)
    assert torch.isfinite(model.log_likelihood(x, k=2)).all()
    assert len(load_datamodule(ckpt, "val", data_root=str(root)).val_dataloader().dataset) == 20
    other = mnist_like(tmp_path / "other", train=120, test=31)
    with pytest.raises(UserError, match="allow_other_data"):
        load_datamodule(ckpt, data_root=str(other))
    with pytest.raises(UserError, match="split='tests' is not allowed: expected one of train, "
                                        "val, test"):
        load_datamodule(ckpt, "tests")


def test_a_model_moved_out_of_its_run_names_the_data_path_it_needs(tmp_path, monkeypatch):
    """``load_datamodule`` of an exported model (no run record beside it) of data=array said
    "a path the run's record does not give": there was no record, and the export's config held
    the path (newcomer walkthrough twelve). The message says so and shows the run's path,
    without reading it (a checkpoint does not choose what is read)."""
    import shutil

    from compose import train_briefly

    from vae_lightning import load_datamodule
    from vae_lightning.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    np.save("rows.npy", np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32))
    path = train_briefly(["data=array", "data.path=rows.npy", "model/likelihood=gaussian",
                          "model.decoder.likelihood.mean_activation=identity", "model.latent=2",
                          "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]"],
                         tmp_path / "run", 1)[0]
    moved = tmp_path / "shared" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    with pytest.raises(ConfigError, match=r"read from a path that no run record beside it gives "
                       r"\(no .*/shared/\.hydra/config\.yaml: an exported model, or one moved out "
                       r"of its run\): name it with data_path=\.\.\. \(its run read "
                       r"data\.path='rows\.npy'; the checkpoint's own word for it is not "
                       r"followed\)"):
        load_datamodule(moved, split="val")
    assert len(load_datamodule(moved, split="val", data_path="rows.npy").val_dataloader())
