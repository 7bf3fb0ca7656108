"""vae-eval's progress file (``log_likelihood.Progress``) is untrusted input: one whose batches
do not add up, or do not fit the batches the evaluation draws, is set aside with a warning and
the evaluation starts over, to a fresh run's numbers; a sound one is still gone on from."""

import math

import pytest
import torch
from models import binary_images, small_vae

from vae_lightning import log_likelihood
from vae_lightning.log_likelihood import Progress, evaluate

K = 5


class _Killed(BaseException):
    """Stands for the process being killed after a batch was saved."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small_vae()


def _batches(size=10, n=40):
    x = binary_images(n)
    return [x[start:start + size] for start in range(0, n, size)]


def _estimates(results):
    return {key: results[key] for key in ("elbo", "iw", "n", "active_units", "kl")}


def _run(model, progress=None, batches=None):
    torch.manual_seed(0)
    return evaluate(model, batches or _batches(), K, progress=progress)


def _stopped(model, path, monkeypatch, after=2):
    """A progress file of an evaluation killed after ``after`` batches."""
    save = Progress.save

    def save_then_stop(self, done, *args, **kwargs):
        save(self, done, *args, **kwargs)
        if done == after:
            raise _Killed

    with monkeypatch.context() as patched:
        patched.setattr(Progress, "save", save_then_stop)
        with pytest.raises(_Killed):
            _run(model, Progress(path, {"k": K}))
    return torch.load(path, weights_only=True)


def test_a_sound_progress_file_is_gone_on_from(model, tmp_path, monkeypatch, caplog):
    path = tmp_path / "eval.progress.pt"
    _stopped(model, path, monkeypatch)
    with caplog.at_level("INFO"):
        resumed = _run(model, Progress(path, {"k": K}))
    assert "after its first 2 batches" in caplog.text and "holds no part" not in caplog.text
    assert _estimates(resumed) == _estimates(_run(model))


def _full(state, value):
    state["parts"]["elbos"][0] = torch.full_like(state["parts"]["elbos"][0], value)


def _nan_iws(state):
    state["parts"]["iws"][0][0] = math.nan


def _long_elbos(state):
    state["parts"]["elbos"][1] = torch.full((500,), 500.0)
    state["parts"]["iws"][1] = torch.full((500,), 500.0)


def _iw_below_elbo(state):
    _full(state, 5000.0)  # the ELBO raised alone: IW < ELBO for the same draws


def _short_means(state):
    state["parts"]["means"][0] = state["parts"]["means"][0][:3]


def _wide_params(state):
    for i, params in enumerate(state["parts"]["params"]):
        state["parts"]["params"][i] = torch.cat([params, params], 1)


def _no_divergences(state):
    state["parts"]["divergences"] = []


def _nan_divergence(state):
    state["parts"]["divergences"][1][0] = math.nan  # eval.json's kl: null


def _infinite_params(state):
    state["parts"]["params"][0][0, 0] = math.inf  # eval.json's mi: null


def _integer_divergences(state):
    state["parts"]["divergences"][0] = state["parts"]["divergences"][0].long()


@pytest.mark.parametrize("tamper, why", [
    (_nan_iws, "not all finite"),
    (_long_elbos, "not one per point"),
    (_iw_below_elbo, "IW estimate is below its ELBO"),
    (_short_means, "not one per point"),
    (_wide_params, "are not the model's"),
    (_no_divergences, "KL divergences are not those"),
    (_nan_divergence, "not all finite"),
    (_infinite_params, "not all finite"),
    (_integer_divergences, "KL divergences are not real numbers"),
])
def test_a_progress_file_that_does_not_add_up_is_set_aside(model, tmp_path, monkeypatch,
                                                           caplog, tamper, why):
    """Before: NaN IW estimates, an entry of 500 values or an ELBO of 5000 were taken as the
    finished batches' results (eval.json's elbo 909053, or 490.667 for data near -363); and, after
    that, a NaN KL divergence or an infinite posterior parameter (eval.json's kl or mi: null)."""
    path = tmp_path / "eval.progress.pt"
    state = _stopped(model, path, monkeypatch)
    tamper(state)
    torch.save(state, path)
    with caplog.at_level("INFO"):
        got = _run(model, Progress(path, {"k": K}))
    assert "holds no part of this evaluation" in caplog.text and why in caplog.text
    assert "Going on with" not in caplog.text
    assert _estimates(got) == _estimates(_run(model))


def test_a_progress_file_whose_first_batch_does_not_fit_is_set_aside(model, tmp_path,
                                                                      monkeypatch, caplog):
    """The kept batches are compared with the batches the evaluation draws in their place: the
    file's batches of 10 are not the data's of 8, seen at the first, which is scored after all,
    from a fresh run's random state."""
    path = tmp_path / "eval.progress.pt"
    _stopped(model, path, monkeypatch)
    with caplog.at_level("INFO"):
        got = _run(model, Progress(path, {"k": K}), _batches(size=8))
    assert "holds no part of this evaluation" in caplog.text
    assert _estimates(got) == _estimates(_run(model, batches=_batches(size=8)))
    assert got["n"] == sum(map(len, _batches(size=8)))


def test_a_progress_file_keeping_more_batches_than_the_data_give_is_refused(model, tmp_path,
                                                                           monkeypatch):
    """Found after its first batch (the rest are not held, which would take the split's
    memory): one error naming the file, to be deleted."""
    from vae_lightning.errors import ConfigError

    path = tmp_path / "eval.progress.pt"
    _stopped(model, path, monkeypatch)
    with pytest.raises(ConfigError, match=r"eval.progress.pt does not fit this evaluation \(it "
                                          r"keeps 2 batches, and the data give 1\): delete it"):
        _run(model, Progress(path, {"k": K}), _batches()[:1])


def test_the_iw_estimate_is_never_below_the_elbo_of_its_draws(model):
    """The check above holds for any genuine batch: the IW estimate and the ELBO are of the
    same k log-weights (log mean exp >= mean), so a sound file is never set aside for it."""
    x = binary_images(200)
    for k in (1, 2, 50):
        torch.manual_seed(k)
        elbo, iw = log_likelihood.importance_weighted(model, x, k, 7)
        assert bool((iw >= elbo - log_likelihood.ROUNDING * (1 + elbo.abs())).all())


def test_a_flow_posterior_s_parameters_are_not_kept(tmp_path, monkeypatch, caplog):
    """Each point's posterior parameters serve eval.json's mi only, which a flow has not (no
    closed-form q(z|x) at every point's draw): they are not kept, in memory or in the progress
    file (a Sylvester flow's 10,700 a point made a k = 5000 evaluation's file 430 MB). A file of
    the earlier version, which kept them, is still gone on from, to the same numbers."""
    from vae_lightning.posteriors.planar import Planar

    torch.manual_seed(0)
    flow = small_vae(posterior=Planar(length=2))
    path = tmp_path / "eval.progress.pt"
    state = _stopped(flow, path, monkeypatch)
    assert state["parts"]["params"] == [] and len(state["parts"]["means"]) == 2
    fresh = _run(flow)
    assert fresh["mi"] is None and math.isfinite(fresh["kl"])
    with caplog.at_level("INFO"):
        assert _estimates(_run(flow, Progress(path, {"k": K}))) == _estimates(fresh)
    with torch.no_grad():  # as the earlier version kept them: one entry per batch
        state["parts"]["params"] = [flow.encoder.params(x) for x in _batches()[:2]]
    torch.save(state, path)
    caplog.clear()
    with caplog.at_level("INFO"):
        assert _estimates(_run(flow, Progress(path, {"k": K}))) == _estimates(fresh)
    assert "after its first 2 batches" in caplog.text


def test_a_gaussian_posterior_s_parameters_are_kept_for_the_mutual_information(
        model, tmp_path, monkeypatch, caplog):
    """The mutual information needs every q(z|x): a file without them is set aside."""
    path = tmp_path / "eval.progress.pt"
    state = _stopped(model, path, monkeypatch)
    assert len(state["parts"]["params"]) == 2
    assert math.isfinite(_run(model)["mi"])
    state["parts"]["params"] = []
    torch.save(state, path)
    with caplog.at_level("INFO"):
        _run(model, Progress(path, {"k": K}))
    assert "keeps no posterior parameters, which this model's evaluation needs" in caplog.text
