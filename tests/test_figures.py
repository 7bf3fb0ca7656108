"""Figures: the manifold grid decodes the inverse-CDF points in order, PCA projection, and the
callback writes every PNG at the end of fit and logs them to TensorBoard."""

import pytest
import torch
from compose import compose_train
from torch.distributions import Normal

from vae_lightning.callbacks.figures import decode_mean, manifold_grid, project_2d, tile
from vae_lightning.train import build, train

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
    model = build(compose_train(["data=frey", "model.latent=2"], tmp_path)).model.eval()
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
