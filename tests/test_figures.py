"""Figures: the manifold grid decodes the inverse-CDF points in order and its axes name z1 and z2;
the curves' log axis is labelled on any span; the latent scatter has one colour and one name per
class; PCA projection; the callback writes every PNG at the end of fit (with or without a
validation split) and logs them to TensorBoard."""

import numpy as np
import pytest
import torch
from compose import compose_train
from torch.distributions import Normal

from vae_lightning.callbacks import figures as figures_module
from vae_lightning.callbacks.figures import (
    CURVE_LABELS,
    circle_figure,
    curves_figure,
    manifold_figure,
    manifold_grid,
    manifold_ticks,
)
from vae_lightning.callbacks.images import decode_mean, tile
from vae_lightning.callbacks.latent_scatter import latents_figure, project_2d
from vae_lightning.train import build_run, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
FAST = ["data=frey", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.max_epochs=2", *QUIET]


def test_manifold_grid_is_the_inverse_cdf_of_the_unit_square_in_plot_order():
    n = 5
    z = manifold_grid(n)
    u = (torch.arange(n) + 0.5) / n
    icdf = Normal(0.0, 1.0).icdf(u)
    assert z.shape == (n, n, 2)
    for i in range(n):
        for j in range(n):
            # column j: z_1 = icdf(u_j), left to right; row i: z_2 = icdf(u_{n-1-i}), top down
            torch.testing.assert_close(z[i, j], torch.stack([icdf[j], icdf[n - 1 - i]]))
    assert (z[:, 1:, 0] > z[:, :-1, 0]).all() and (z[1:, :, 1] < z[:-1, :, 1]).all()


def test_manifold_picture_cell_ij_is_the_decoded_mean_at_z_ij(tmp_path):
    torch.manual_seed(0)
    model = build_run(compose_train(["data=frey", "model.latent=2"], tmp_path)).model.eval()
    n, shape = 4, (1, 28, 20)
    assert tuple(model.data_shape) == shape
    z = manifold_grid(n)
    means = decode_mean(model, z)
    assert means.shape == (n, n, *shape)
    picture = tile(means)
    assert picture.shape == (n * 28, n * 20, 1)
    for i, j in [(0, 0), (0, 3), (2, 1), (3, 3)]:
        with torch.no_grad():
            expected = model.decoder(z[i, j]).mean
        assert expected.shape == shape
        torch.testing.assert_close(picture[i * 28:(i + 1) * 28, j * 20:(j + 1) * 20],
                                   expected.permute(1, 2, 0))


def test_a_latent_space_on_the_circle_decodes_the_circle_in_reading_order(tmp_path, monkeypatch):
    """model=svae with 2 latent dimensions: the manifold is the circle S^1, decoded at n^2 evenly
    spaced angles, row by row, not the Gaussian grid (whose points are off the circle)."""
    model = build_run(compose_train(["data=frey", "model=svae", "model.latent=2"],
                                    tmp_path)).model.eval()
    seen = []
    decode = figures_module.decode_mean
    monkeypatch.setattr(figures_module, "decode_mean", lambda m, z, y: seen.append(z) or
                        decode(m, z, y))
    circle_figure(model, 4)
    (z,) = seen
    assert z.shape == (4, 4, 2)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4, 4))
    angles = torch.atan2(z[..., 1], z[..., 0]).reshape(-1) % (2 * torch.pi)
    torch.testing.assert_close(angles, 2 * torch.pi * torch.arange(16) / 16, atol=1e-5, rtol=0)
    picture = tmp_path / "figures" / "manifold.png"
    train(compose_train([*FAST, "model=svae", "model.latent=2"], tmp_path))
    assert picture.exists() and len(seen) == 2  # the callback drew the circle


def test_tile_puts_channels_last_and_image_rc_at_block_rc():
    images = torch.arange(2 * 3 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 3, 4, 5)
    picture = tile(images)
    assert picture.shape == (2 * 4, 3 * 5, 3)
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(picture[r * 4:(r + 1) * 4, c * 5:(c + 1) * 5],
                                       images[r, c].permute(1, 2, 0))


def test_project_2d_keeps_2d_and_finds_the_principal_plane():
    z2 = torch.randn(50, 2)
    assert torch.equal(project_2d(z2)[0], z2)
    torch.manual_seed(0)
    z = torch.randn(500, 5) * torch.tensor([0.1, 5.0, 0.1, 2.0, 0.1])
    points, axis = project_2d(z)
    assert axis == "PC" and points.shape == (500, 2)
    assert points[:, 0].var().item() == pytest.approx(z[:, 1].var().item(), rel=0.05)
    assert points[:, 1].var().item() == pytest.approx(z[:, 3].var().item(), rel=0.05)


def test_a_one_point_validation_split_draws_its_figures_and_the_run_ends(tmp_path):
    """data.val_size=1 (a folder of 14 images by default): the principal plane of one point
    has one component; the scatter gets a zero second axis, not an IndexError after training
    (which lost the run's test evaluation, and its resume again)."""
    assert project_2d(torch.randn(1, 5))[0].shape == (1, 2)
    assert project_2d(torch.randn(2, 5))[0].shape == (2, 2)
    results = train(compose_train([*FAST, "model.latent=3", "data.val_size=1"], tmp_path))
    assert results["status"] == "completed" and (tmp_path / "figures" / "latents.png").is_file()


@pytest.mark.parametrize(
    "latent,manifold", [(2, True), (3, False)]
)
def test_callback_writes_the_figures_and_logs_them_to_tensorboard(tmp_path, latent, manifold):
    train(compose_train([*FAST, f"model.latent={latent}", "logger=tensorboard"], tmp_path))
    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    expected = {"samples.png", "reconstructions.png", "latents.png", "curves.png"}
    assert figures == expected | ({"manifold.png"} if manifold else set())
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.*"))
    for name in expected:
        assert f"figures/{name[:-4]}".encode() in events
    assert (b"figures/manifold" in events) == manifold
    # The training curves: (training samples seen, bound) after each of the 2 epochs.
    curves = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"][
        "Figures"]["curves"]
    assert [seen for seen, _ in curves["train"]] == [200, 400]  # 2 batches of 100 an epoch
    assert [seen for seen, _ in curves["val"]] == [200, 400]


@pytest.mark.parametrize("n", [1, 2, 5, 10, 11, 20, 21, 30, 100])
def test_manifold_ticks_are_few_symmetric_and_reach_both_ends(n):
    ticks = manifold_ticks(n)
    assert ticks == sorted(set(ticks)) and ticks[0] == 0 and ticks[-1] == n - 1
    assert {n - 1 - m for m in ticks} == set(ticks)
    assert len(ticks) <= 12
    assert len(ticks) == n or len(ticks) >= 6  # a small grid names every cell


def _labels(texts) -> list[float]:
    return [float(t.get_text().replace("\N{MINUS SIGN}", "-")) for t in texts]


@pytest.fixture
def frey_model(tmp_path):
    torch.manual_seed(0)
    return build_run(compose_train(["data=frey", "model.latent=2"], tmp_path)).model.eval()


def test_manifold_axes_name_z1_growing_right_and_z2_growing_up(frey_model):
    n, (h, w) = 8, (28, 20)
    fig = manifold_figure(frey_model, n)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "$z_1$" and ax.get_ylabel() == "$z_2$"
    z, cells = manifold_grid(n), manifold_ticks(n)
    # Each tick sits at the centre of its cell and names that cell's z, to two decimals.
    assert list(ax.get_xticks()) == pytest.approx([(j + 0.5) * w - 0.5 for j in cells])
    assert list(ax.get_yticks()) == pytest.approx([(i + 0.5) * h - 0.5 for i in cells])
    x_values, y_values = _labels(ax.get_xticklabels()), _labels(ax.get_yticklabels())
    assert x_values == pytest.approx([float(z[0, j, 0]) for j in cells], abs=0.005)
    assert y_values == pytest.approx([float(z[i, 0, 1]) for i in cells], abs=0.005)
    # z1 grows to the right; the picture's row 0 is drawn at the top, and z2 grows upwards.
    assert x_values == sorted(x_values) and x_values[0] < 0 < x_values[-1]
    bottom, top = ax.get_ylim()
    assert top < bottom  # y pixel coordinates grow downwards: the first row is the top row
    assert y_values == sorted(y_values, reverse=True)


def _visible_tick_labels(fig):
    """The x tick labels drawn inside the axis span, and whether any two of them overlap."""
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    shown = [t for t, x in zip(ax.get_xticklabels(), ax.get_xticks())
             if low <= x <= high and t.get_text()]
    boxes = [t.get_window_extent() for t in shown]
    overlap = any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    return [t.get_text() for t in shown], overlap


@pytest.mark.parametrize("low,high", [(1600, 4700), (1800, 5300), (3000, 9000), (1e3, 1e4),
                                      (300, 3e4), (1e3, 1e7), (100, 1e8)])
def test_curves_log_axis_is_labelled_on_any_span_without_overlaps(low, high):
    seen = np.geomspace(low, high, 12).astype(int)
    fig = curves_figure({"train": [(int(s), -100.0 + i) for i, s in enumerate(seen)],
                         "val": [(int(s), -101.0 + i) for i, s in enumerate(seen)]})
    labels, overlap = _visible_tick_labels(fig)
    assert len(labels) >= 3, labels
    assert not overlap, labels
    assert fig.axes[0].get_xlabel() == "training samples seen"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        CURVE_LABELS["train"], CURVE_LABELS["val"]]


def test_curves_without_validation_show_the_training_bound_alone():
    fig = curves_figure({"train": [(200, -300.0), (400, -250.0)], "val": []})
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [CURVE_LABELS["train"]]
    empty = curves_figure({"train": [], "val": []}).axes[0]
    assert not empty.get_lines() and empty.get_legend() is None


def test_curves_draw_the_log_spaced_bound_dashed_beside_the_epochs():
    spaced = {"test data, 200 points, at log-spaced counts (curve.json)":
              [(1000, -400.0), (3162, -300.0), (5095, -250.0)], "empty": []}
    ax = curves_figure({"train": [(5095, -260.0)], "val": []}, spaced).axes[0]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--"]
    assert list(ax.get_lines()[1].get_xdata()) == [1000, 3162, 5095]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [CURVE_LABELS["train"],
                                                                   *list(spaced)[:1]]


def _class_bar(fig):
    """The scatter's distinct colours (as drawn) and the colour bar's tick labels and title."""
    fig.canvas.draw()
    ax, bar = fig.axes
    colours = {tuple(c) for c in ax.collections[0].get_facecolors().round(4)}
    return colours, [t.get_text() for t in bar.get_yticklabels()], bar.get_ylabel()


def test_latents_have_one_colour_and_one_named_entry_per_class(frey_model):
    x = torch.rand(40, 1, 28, 20)
    labels = torch.arange(40) % 2
    colours, names, title = _class_bar(latents_figure(frey_model, x, labels, ["cat", "dog"]))
    assert len(colours) == 2 and names == ["cat", "dog"] and title == "class"
    # Without names (or with too few for the labels): the label numbers.
    for classes in (None, (), ["cat"]):
        colours, names, _ = _class_bar(latents_figure(frey_model, x, labels, classes))
        assert len(colours) == 2 and names == ["0", "1"]
    colours, names, _ = _class_bar(latents_figure(frey_model, x, torch.arange(40) % 10))
    assert len(colours) == 10 and names == [str(k) for k in range(10)]


def test_latents_title_names_the_split_and_unlabelled_data_are_coloured_by_position(frey_model):
    fig = latents_figure(frey_model, torch.rand(30, 1, 28, 20), torch.full((30,), -1),
                         split="test")
    ax, bar = fig.axes
    assert ax.get_title() == "Posterior means of test data"
    assert bar.get_ylabel() == "position in the test split (data order)"


def test_latents_title_of_a_projection_fits_in_the_figure(tmp_path):
    """The title of a 20-d model's scatter (with "first two principal components") is drawn
    whole: on one line beside the colour bar it was cut at the figure's left edge."""
    torch.manual_seed(0)
    model = build_run(compose_train(["data=frey", "model.latent=20"], tmp_path)).model.eval()
    fig = latents_figure(model, torch.rand(30, 1, 28, 20), torch.arange(30) % 3,
                         split="validation")
    fig.canvas.draw()
    title = fig.axes[0].title
    assert title.get_text() == ("Posterior means of validation data\n(20-d, first two principal "
                                "components)")
    box = title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_figures_without_a_validation_split(tmp_path):
    """data.val_size=0: the scatter and the reconstructions use the test split; the curves the
    training bound alone."""
    train(compose_train([*FAST, "model.latent=2", "data.val_size=0"], tmp_path))
    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert figures == {"samples.png", "reconstructions.png", "latents.png", "curves.png",
                       "manifold.png"}
    curves = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"][
        "Figures"]["curves"]
    assert [seen for seen, _ in curves["train"]] == [200, 400] and curves["val"] == []


def test_a_model_on_condition_vectors_draws_its_samples_and_manifold_given_data_vectors(
        tmp_path, monkeypatch):
    """A CVAE trained on condition vectors (data.condition): the samples and the manifold are
    drawn given condition vectors of the data's points, not the unit vectors of labels 0..D-1
    (which need be no condition the model saw: a pose, a measurement)."""
    rng = np.random.default_rng(0)
    n = 60
    condition = rng.normal(3.0, 0.5, (n, 3)).astype(np.float32)  # far from any unit vector
    np.savez(tmp_path / "v.npz", x=rng.random((n, 1, 4, 4)).astype(np.float32), c=condition)
    given: list[torch.Tensor] = []
    from vae_lightning.module import VAE
    decode = VAE.decode

    def spy(self, z, y=None):
        given.append(torch.as_tensor(y))
        return decode(self, z, y)

    monkeypatch.setattr(VAE, "decode", spy)
    cfg = compose_train([*FAST, "data=array", f"data.path={tmp_path / 'v.npz'}",
                         "data.condition=c", "model=cvae", "model.classes=3", "model.latent=2",
                         "data.batch_size=20", "callbacks.figures.n_points=10"],
                        tmp_path / "run")
    train(cfg)
    drawn = {p.name for p in (tmp_path / "run" / "figures").glob("*.png")}
    assert {"samples.png", "manifold.png"} <= drawn
    assert given and all(y.is_floating_point() for y in given), given  # not labels 0, 1, 2
    vectors = torch.cat([y.reshape(-1, 3) for y in given])
    # Every vector the figures decoded with is one of the data's, none a unit vector.
    data = torch.from_numpy(condition)
    distance = (vectors.float()[:, None] - data[None]).abs().amax(-1).min(1).values
    assert distance.max() < 1e-5, vectors[distance.argmax()]


def test_no_figure_is_drawn_from_weights_that_are_not_finite(caplog):
    """A run whose update made its weights NaN while the loss was still finite (found with
    PIWAE's withdrawn one-pass variant): the figures at the end of fit raised a traceback from
    decode (exit 1) before the run could end as diverged (exit 4); now they are left out with
    a warning."""
    from types import SimpleNamespace

    from models import small_vae

    from vae_lightning.callbacks.figures import Figures

    model = small_vae()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with caplog.at_level("WARNING"):
        Figures().draw(SimpleNamespace(is_global_zero=True, datamodule=None), model)
    assert "Figures not drawn: the model's weights are not all finite" in caplog.text


def test_the_scatter_and_reconstructions_are_spread_over_the_split(tmp_path):
    """Data of one's own held out in the file's order, sorted by class (a folder of class
    subfolders is): the scatter's and reconstructions' points were the split's first ones,
    all of the first class. They are spread evenly over it, every class among them."""
    from types import SimpleNamespace

    from vae_lightning.callbacks.figures import Figures, spread
    from vae_lightning.data import ArrayDataModule

    assert spread(10, 4).tolist() == [0, 3, 6, 9] and spread(3, 40).tolist() == [0, 1, 2]
    labels = np.repeat(np.arange(4), 100)  # sorted by class, as a folder's files are
    np.savez(tmp_path / "sorted.npz", x=np.random.default_rng(0).integers(
        0, 256, (400, 4, 4), np.uint8), y=labels)
    dm = ArrayDataModule(path=str(tmp_path / "sorted.npz"), labels_key="y", val_size=200,
                         test_size=10)
    dm.setup("fit")
    x, y = Figures(n_points=20)._validation_points(SimpleNamespace(datamodule=dm), "cpu", "val")
    assert len(x) == len(y) == 20 and set(y.tolist()) == {0, 1, 2, 3}
    assert set(y[spread(20, 4)].tolist()) == {0, 1, 2, 3}
