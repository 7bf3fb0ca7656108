"""The path interpolate decodes stays in the model's latent space: a straight line in R^latent,
the great circle on the sphere of an S-VAE (the line passes inside the ball, |z| near 0
midway between nearly opposite points, where the decoder was never trained), and a refusal for
a space of one-hot codes, which any line between two codes leaves (hostile round sixteen)."""


import pytest
import torch
from compose import compose_train

from vae_lightning.priors.hyperspherical import HypersphericalUniform
from vae_lightning.train import build_run


def test_the_great_circle_stays_on_the_sphere_at_equal_angles():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 4, 5, dtype=torch.float64), dim=-1)
    z1, z2 = z[0], z[1]
    t = torch.linspace(0, 1, 7, dtype=torch.float64).view(-1, 1, 1)
    path = HypersphericalUniform(5).path(z1, z2, t)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(7, 4, dtype=torch.float64))
    torch.testing.assert_close(path[0], z1)
    torch.testing.assert_close(path[-1], z2)
    angle = torch.acos((z1 * z2).sum(-1))
    steps = torch.acos((path[1:] * path[:-1]).sum(-1).clamp(-1, 1))  # each step's angle
    torch.testing.assert_close(steps, (angle / 6).expand(6, 4))
    # the same point: every step is that point (no 0 / 0)
    same = HypersphericalUniform(5).path(z1, z1.clone(), t)
    torch.testing.assert_close(same, z1.expand(7, 4, 5))


def test_opposite_points_have_no_one_great_circle():
    z1 = torch.tensor([[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="opposite on the sphere"):
        HypersphericalUniform(3).path(z1, -z1, torch.linspace(0, 1, 5).view(-1, 1, 1))


def _model(tmp_path, *overrides):
    torch.manual_seed(0)
    run = build_run(compose_train(["data=frey", "model.latent=2", *overrides], tmp_path))
    return run.model.eval()


def test_an_s_vae_interpolates_on_its_circle(tmp_path, monkeypatch):
    model = _model(tmp_path, "model=svae")
    decoded = []
    real = model.images
    monkeypatch.setattr(model, "images", lambda z, **kw: decoded.append(z) or real(z, **kw))
    x = torch.rand(2, *model.data_shape)
    images = model.interpolate(x[0], x[1], steps=9)
    assert images.shape == (9, *model.data_shape)
    torch.testing.assert_close(decoded[0].norm(dim=-1), torch.ones(9, 1))


def test_a_space_of_one_hot_codes_is_refused(tmp_path):
    model = _model(tmp_path, "model=gumbel", "model.encoder.posterior.categories=2")
    x = torch.rand(2, *model.data_shape)
    with pytest.raises(ValueError, match="one-hot blocks of categories .* the line leaves"):
        model.interpolate(x[0], x[1])


def test_the_paper_s_latent_space_interpolates_along_the_line(tmp_path, monkeypatch):
    model = _model(tmp_path)
    decoded = []
    real = model.images
    monkeypatch.setattr(model, "images", lambda z, **kw: decoded.append(z) or real(z, **kw))
    x = torch.rand(2, *model.data_shape)
    model.interpolate(x[0], x[1], steps=5)
    z1, z2 = (model.encoder.location(model.encode(x[i:i + 1])) for i in (0, 1))
    for i, t in enumerate(torch.linspace(0, 1, 5)):
        torch.testing.assert_close(decoded[0][i], (1 - t) * z1 + t * z2)
    assert decoded[0].shape[0] == 5
