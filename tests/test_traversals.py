"""Latent traversals: dimensions ranked by their mean KL (by the posterior location's variance
where q or p is not a product over the dimensions), each traversal cell the decoded mean at the
base point with one dimension set, the figure's labels, the animated GIF, and the figures
callback's option, which leaves the training's random stream as it was."""

import pytest
import torch
from compose import compose_train
from PIL import Image
from torch.distributions import Normal, kl_divergence

from vae_lightning.callbacks.traversals import (
    latent_ranking,
    traversal,
    traversal_figure,
    traversal_gif,
    write_traversals,
)
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
FAST = ["data=frey", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.max_epochs=2", "callbacks.bound_curve=null",
        *QUIET]


def _model(tmp_path, *overrides):
    torch.manual_seed(0)
    model = build_run(compose_train(["data=frey", "model.latent=4", *overrides], tmp_path)).model
    with torch.no_grad():  # dimensions of clearly different KL
        model.encoder.net[-1].bias[:4] += torch.tensor([0.0, 2.0, -1.0, 0.5])
    return model.eval()


@pytest.fixture
def model(tmp_path):
    return _model(tmp_path)


@pytest.fixture
def x():
    return torch.rand(30, 1, 28, 20, generator=torch.Generator().manual_seed(1))


def test_dimensions_are_ranked_by_their_mean_kl(model, x):
    ranking = latent_ranking(model, x)
    with torch.no_grad():
        q = model.encode(x).base_dist
        kl = kl_divergence(Normal(q.loc, q.scale), Normal(0.0, 1.0)).mean(0)
    assert ranking.dims == kl.argsort(descending=True).tolist()
    assert ranking.scores == pytest.approx(kl.sort(descending=True).values.tolist(), rel=1e-5)
    assert "KL" in ranking.what
    plain = latent_ranking(model, None)
    assert plain.dims == [0, 1, 2, 3] and plain.scores is None


def test_without_factorized_parts_the_posterior_location_s_variance_ranks(tmp_path, x):
    model = _model(tmp_path, "model/prior=vamp")
    assert "factorized" not in model.prior.features
    ranking = latent_ranking(model, x)
    with torch.no_grad():
        spread = model.encoder.location(model.encode(x)).var(0)
    assert ranking.dims == spread.argsort(descending=True).tolist()
    assert "variance" in ranking.what


def test_each_cell_decodes_the_base_point_with_one_dimension_set(model, x):
    found = traversal(model, x, bases=3, steps=5, span=2.0, dims=3)
    assert found.images.shape == (3, 3, 5, 1, 28, 20)
    assert found.values.tolist() == pytest.approx([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert found.ranking.dims == latent_ranking(model, x).dims[:3]
    with torch.no_grad():
        base = model.encoder.location(model.encode(x[:3]))
        for b, row, step in [(0, 0, 0), (1, 2, 4), (2, 1, 3)]:
            z = base[b].clone()
            z[found.ranking.dims[row]] = found.values[step]
            torch.testing.assert_close(found.images[b, row, step], model.decode(z).mean)
    prior = traversal(model, None, bases=2, steps=3)
    assert prior.images.shape == (2, 4, 3, 1, 28, 20) and "prior" in prior.base


def test_a_model_of_condition_vectors_traverses_each_base_with_its_own_vector():
    """Condition vectors [bases, K] were repeated number by number (repeat_interleave without a
    dim): "a condition vector per point, floats [batch, K], is expected ... got shape [160,
    480]", from vae-sample traverse=true and the figures' traversals=true (after training)."""
    import conditional_gaussian as cg

    model = cg.model()
    x, _ = cg.data(6)
    vectors = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    found = traversal(model, x, bases=2, steps=3, span=1.0, y=vectors)
    assert found.images.shape == (2, 3, 3, *cg.SHAPE)
    with torch.no_grad():
        base = model.encoder.location(model.encode(x[1], vectors[1:2]))
        z = base.clone()
        z[found.ranking.dims[0]] = found.values[2]
        torch.testing.assert_close(found.images[1, 0, 2], model.decode(z, vectors[1:2]).mean)


def test_the_figure_names_each_row_s_dimension_and_score(model, x):
    found = traversal(model, x, bases=1, steps=4)
    ax = traversal_figure(found).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [f"$z_{{{d}}}$ ({s:.2f})" for d, s in zip(found.ranking.dims,
                                                                found.ranking.scores)]
    assert len(ax.get_xticks()) == 4 and "KL" in ax.get_ylabel()


def test_the_gif_animates_every_dimension_for_every_base_point(model, x, tmp_path):
    found = traversal(model, x, bases=2, steps=6)
    path = traversal_gif(found, tmp_path / "t.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2 * 6 - 2  # out and back
        zoom = 3  # 28-pixel-high images enlarged to at least 64
        assert gif.size == (4 * 20 * zoom, 2 * 28 * zoom)
    paths = write_traversals(model, tmp_path, x, steps=3, gif=False)
    assert paths == [tmp_path / "traversals.png"] and paths[0].stat().st_size > 0


def test_the_callback_option_draws_them_and_leaves_training_as_it_was(tmp_path):
    """Drawn after the first epoch as well (every_n_epochs=1), with the prior draws and KL
    samples in their own random stream: the second epoch trains as without them."""
    plain, drawn = tmp_path / "plain", tmp_path / "drawn"
    both = [*FAST, "model.latent=3", "callbacks.figures.every_n_epochs=1"]
    train(compose_train(both, plain))
    train(compose_train([*both, "callbacks.figures.traversals=true",
                         "callbacks.figures.traversal_gif=true",
                         "callbacks.figures.traversal_steps=4"], drawn))
    assert (drawn / "figures" / "traversals.png").is_file()
    assert (drawn / "figures" / "traversals-epoch001.png").is_file()
    with Image.open(drawn / "figures" / "traversals.gif") as gif:
        assert gif.n_frames == 6
    assert not (plain / "figures" / "traversals.png").exists()
    weights = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for run in (plain, drawn)]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_vae_sample_traverse_writes_the_traversals_beside_the_samples(tmp_path):
    """vae-sample traverse=true: traversals.png (and .gif) from a checkpoint, the dimensions
    ranked by KL over training images read as vae-eval reads its data."""
    from compose import compose_train, sample_config

    from vae_lightning.train import train

    run = tmp_path / "run"
    checkpoint = train(compose_train(
        ["data=frey", "model.latent=3", "model.encoder.net.hidden=[16]",
         "model.decoder.net.hidden=[16]", "trainer.max_epochs=1", "logger=none",
         "trainer.enable_progress_bar=false", "callbacks.figures=null",
         "callbacks.bound_curve=null"], run))["checkpoint"]
    out = sample_config([f"ckpt_path={checkpoint}", "n=4", "device=cpu", "traverse=true",
                         "traverse_steps=5", "traverse_gif=true", "traverse_bases=2",
                         "traverse_points=50", f"output_dir={tmp_path / 'out'}"])()
    assert (out / "samples.npy").is_file() and (out / "traversals.png").is_file()
    assert (out / "traversals.gif").read_bytes()[:6] in (b"GIF87a", b"GIF89a")


def test_traversals_of_a_latent_space_on_the_sphere_are_refused_before_training(tmp_path):
    """A coordinate swept along a line leaves the S-VAE's unit sphere: the callback option
    refuses before any training step (no checkpoint), vae-sample's traverse=true before any
    drawing (no samples written)."""
    from compose import sample_config

    from vae_lightning.errors import ConfigError

    svae = ["model=svae", "model.latent=3", "model.encoder.net.hidden=[8]",
            "model.decoder.net.hidden=[8]"]
    with pytest.raises(ConfigError, match="traversals=true: .*the unit sphere.*leave traversals"):
        train(compose_train([*FAST, *svae, "callbacks.figures.traversals=true"],
                            tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()
    checkpoint = train(compose_train([*FAST, *svae, "logger=none"], tmp_path / "run"))[
        "checkpoint"]
    with pytest.raises(ConfigError, match="traverse=true: .*the unit sphere"):
        sample_config([f"ckpt_path={checkpoint}", "n=4", "device=cpu", "traverse=true",
                       f"output_dir={tmp_path / 'out'}"])()
    assert not (tmp_path / "out" / "samples.npy").exists()


def test_a_traversal_of_one_step_is_refused_before_anything_is_read(tmp_path):
    """traverse_steps=1 drew one column at -span, not a traversal: the option takes at least
    2 values, refused with the config's other errors, before the checkpoint is read."""
    from vae_lightning.args import problems
    from vae_lightning.sample import Sampling

    assert problems(Sampling, {"traverse_steps": 1}) == [
        ("traverse_steps", 1, "expected an integer >= 2")]
    assert problems(Sampling, {"traverse_steps": 2}) == []


def test_a_gif_of_traversals_without_traversals_is_refused_before_anything_is_read(tmp_path):
    """traverse_gif=true without traverse=true wrote samples.png and samples.npy and no GIF,
    without a word. Now one error naming the key and what to add, before the checkpoint is read
    (a checkpoint that does not exist is not reached)."""
    from compose import sample_config

    from vae_lightning.errors import ConfigError

    missing = tmp_path / "no.ckpt"
    with pytest.raises(ConfigError, match=r"traverse_gif=True is not allowed: false without "
                                            r"traverse=true .*add traverse=true"):
        sample_config([f"ckpt_path={missing}", "traverse_gif=true",
                       f"output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()
    sampling = sample_config([f"ckpt_path={missing}", "traverse=true", "traverse_gif=true",
                              f"output_dir={tmp_path / 'out'}"])
    assert sampling.traverse["gif"] is True
