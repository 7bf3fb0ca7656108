"""Hostile round twenty-one (/work/notes/hostile21.md): vae-eval and the evaluation library
across the model families, the paths a single-Gaussian VAE never takes (conditional and
semi-supervised models, codebooks, stochastic layers). Each test fails on the code before its
fix."""

import pytest
import torch
from compose import compose_train, run_eval, train_briefly

from vae_lightning.errors import ConfigError
from vae_lightning.train import build_run

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["model.latent=2", "model.encoder.net.hidden=[8]", "model.decoder.net.hidden=[8]"]


def _trained(overrides, run, steps=2):
    """A checkpoint of vae-train's ``overrides`` at ``SMALL`` trained ``steps`` steps in ``run``."""
    return train_briefly([*SMALL, *overrides], run, steps)[0]


@pytest.mark.parametrize("model", ["cvae", "m2"])
def test_the_metrics_of_a_conditional_model_are_refused_before_its_bounds(model, tmp_path,
                                                                          monkeypatch):
    """``vae-eval eval.metrics=[mig]`` of a conditional VAE or M2 trained on dSprites (its shape
    as the label): the bounds were estimated first (hours at k = 5000), then the metrics
    encoded the factors' images without a label and stopped with "this model is conditional on
    a class label ...: give it (e.g. model.sample(n, y=...), vae-sample y=3)", a way out that
    vae-eval does not have. Now refused before the bounds, in words that say why."""
    from vae_lightning import evaluate

    root = tmp_path / "data"
    path = _trained(["data=dsprites_small", f"data.root={root}", f"model={model}",
                     "model.classes=3"], tmp_path / "run")

    def no_bounds(*args, **kwargs):
        raise AssertionError("the bounds were estimated before the refusal")

    monkeypatch.setattr(evaluate, "evaluate", no_bounds)
    with pytest.raises(ConfigError, match=r"eval.metrics=\['mig'\]: this model is conditional "
                       r"on a class label \(model.classes=3"):
        run_eval([f"ckpt_path={path}", "eval.k=2", "eval.limit=4", "eval.device=cpu",
                  f"eval.data_root={root}", "eval.metrics=[mig]", f"output_dir={tmp_path / 'out'}"])


def _partly_labelled(directory, n=60, d=12, seed=0):
    """data=array's overrides (M2, a Gaussian likelihood) for ``n`` vectors of ``d`` values in
    three classes, every other label hidden (-1: data=array's unlabelled point), in every
    split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.random((n, d)) < 0.2 + 0.3 * y[:, None]).astype(np.float32)
    y[::2] = -1
    path = directory / "partly.npz"
    np.savez(path, x=x, y=y)
    return ["data=array", f"data.path={path}", "data.labels_key=y", "data.val_size=10",
            "data.test_size=20", "model=m2", "model.classes=3", "model/likelihood=gaussian",
            "model.decoder.likelihood.mean_activation=identity"]


def test_an_m2_evaluation_of_points_without_labels_bounds_them(tmp_path):
    """vae-eval of M2 (its bounds sum over the classes, whatever the labels) on data=array whose
    test split has unlabelled points (-1): the time check's pass was given the data's labels
    and stopped with "some points have no label (-1): a conditional model needs each point's
    label, or an objective that sums over the classes of the unlabelled ones
    (model/objective=m2)" (the model's own objective), and so did each batch's posterior means
    (eval.max_hours=null). Now the bounds are estimated, the posterior means given q(y|x)'s
    class where a label is hidden, and the classification error is of the labelled points (a
    hidden label counted as a wrong guess)."""
    from vae_lightning.module import VAE
    from vae_lightning.rebuild import load_model

    data = _partly_labelled(tmp_path)
    path = _trained(data, tmp_path / "run")
    base = [f"ckpt_path={path}", "eval.k=3", "eval.batch_size=8", "eval.device=cpu",
            f"eval.data_path={tmp_path / 'partly.npz'}"]
    results = run_eval([*base, f"output_dir={tmp_path / 'out'}"])
    assert results["n"] == 20 and results["active_units"] is not None
    assert results["bound_of"].startswith("log p(x), y enumerated over its 3 classes")
    model = load_model(path, VAE, torch.device("cpu"))[0]
    datamodule = build_run(compose_train([*SMALL, *data], tmp_path / "again")).datamodule
    datamodule.setup("test")
    guess, y = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            x, labels = datamodule.to_inputs(batch)
            guess.append(model.objective.classify(x).argmax(-1))
            y.append(labels)
    guess, y = torch.cat(guess), torch.cat(y)
    known = y >= 0
    assert 0 < int(known.sum()) < len(y)
    assert results["classification_error"] == pytest.approx(
        (guess[known] != y[known]).double().mean().item())
    # without the time check, the batches' posterior means were refused the same way
    unchecked = run_eval([*base, "eval.max_hours=null", f"output_dir={tmp_path / 'unchecked'}"])
    assert unchecked["iw"] == results["iw"]


def test_ais_takes_labels_and_inputs_as_the_model_s_methods_take_them():
    """``vae_lightning.ais.ais`` beside ``model.log_likelihood``: one class for all points
    (``y=1``, as every method of the model takes it) stopped with "'int' object has no attribute
    'repeat'"; two labels for three points were refused as "4 labels given for a batch of 6"
    (counted in chains); a ``y`` for a model without labels was ignored without a word; one
    image without its batch dimension stopped in a broadcast. Now y=1 is every point's class,
    the others are one ValueError each, and one image is a batch of one."""
    import conditional_gaussian as cg
    from models import binary_images, small_vae

    from vae_lightning.ais import ais

    model, (x, y) = cg.model(), cg.data(3)
    settings = {"steps": 2, "chains": 2, "leapfrog": 1}
    torch.manual_seed(0)
    one_class = ais(model, x, y=1, **settings)
    torch.manual_seed(0)
    assert torch.equal(one_class.log_px,
                       ais(model, x, y=torch.ones(3, dtype=torch.long), **settings).log_px)
    with pytest.raises(ValueError, match="2 labels .*given for 3 points"):
        ais(model, x, y=y[:2], **settings)
    vae, images = small_vae(), binary_images(3)
    with pytest.raises(ValueError, match="not conditional on a label.*y would be ignored"):
        ais(vae, images, y=torch.zeros(3, dtype=torch.long), **settings)
    assert ais(vae, images[0], **settings).log_px.shape == (1,)


def test_an_m2_evaluation_of_inputs_alone_bounds_them():
    """``log_likelihood.evaluate`` of M2 over batches of inputs alone, which its docstring
    takes (M2's bounds enumerate y): the bounds were estimated, then each batch's posterior
    means were refused with "this model is conditional on a class label ...: give it". They are
    now given q(y|x)'s class, and the bounds are those of the same batches with labels."""
    from test_m2 import _toy_data, _toy_m2

    from vae_lightning.log_likelihood import evaluate

    model, _ = _toy_m2()
    x = _toy_data(8)
    y = torch.arange(len(x)) % 3
    found = {}
    for name, batches in (("alone", [x[:4], x[4:]]), ("labelled", [(x[:4], y[:4]),
                                                                   (x[4:], y[4:])])):
        torch.manual_seed(0)
        with torch.no_grad():
            found[name] = evaluate(model, batches, k=5)
    for bound in ("iw", "elbo"):
        assert found["alone"][bound] == found["labelled"][bound]
    assert found["alone"]["bound_of"] == found["labelled"]["bound_of"]
