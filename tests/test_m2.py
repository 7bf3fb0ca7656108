"""Semi-supervised M2 (objectives/m2.py, data.labelled, model=m2): the unlabelled bound's sum over
the classes against brute-force enumeration, and its maximum over q(y|x), log sum_y exp L(x, y),
reached at q(y|x) proportional to exp L; on a conditional linear-Gaussian model with the exact
q(z|x, y) and q(y|x) = p(y|x), U(x) = log p(x) exactly; vae-eval's bound on log p(x) with y
enumerated, on a three-class toy whose log p(x) is known by brute force: below it in expectation,
converging to it with k, the same in chunks, its ELBO M2's U(x) in closed form, its time check
counting a pass per class; the labelled subset balanced by class and fixed by the seed; each
minibatch's hidden and shown labels; the objective's loss; and M2 on MNIST with 100 labels
learning to classify (slow)."""

from __future__ import annotations

import math

import conditional_gaussian as cg
import pytest
import torch
from compose import SHARED_DATA, compose_train
from linear_gaussian import set_affine

from vae_lightning.data.labelled import UNLABELLED, SemiSupervised, balanced_subset
from vae_lightning.errors import ConfigError
from vae_lightning.objectives.m2 import M2
from vae_lightning.parts import Bound

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _with_table(objective: M2, recon: torch.Tensor, kl: torch.Tensor) -> None:
    """Make L(x, c) a fixed table: recon[i, c] - kl[i, c] for the i-th point given class c."""
    def labelled(model, x, y):
        i = torch.arange(len(y)) % recon.shape[0]
        return Bound(recon[i, y], kl[i, y] + math.log(objective.classes))

    objective._labelled = labelled


def test_the_unlabelled_bound_sums_over_the_classes_as_brute_force_enumeration():
    torch.manual_seed(0)
    objective = M2(classes=4, data_shape=(1, 2, 2), hidden=())
    recon, kl = -torch.rand(5, 4) * 50, torch.rand(5, 4) * 10
    _with_table(objective, recon, kl)
    x = torch.randn(5, 1, 2, 2)
    bound, log_q = objective._unlabelled(None, x)
    # Enumerate: U(x) = sum_y q(y|x) [L(x, y)] + H(q(y|x)), L = recon - kl + log p(y).
    labelled = recon - kl - math.log(4)
    q = log_q.exp()
    brute = torch.stack([sum(q[i, c] * labelled[i, c] for c in range(4))
                         - sum(q[i, c] * log_q[i, c] for c in range(4)) for i in range(5)])
    torch.testing.assert_close(bound.elbo, brute)
    assert (bound.elbo <= torch.logsumexp(labelled, 1) + 1e-5).all()  # U <= log sum_y exp L
    # With q(y|x) = softmax(L(x, .)) the bound reaches log sum_y exp L(x, y).
    set_affine(objective.classifier, torch.zeros(4, 4), torch.zeros(4))
    objective.classify = lambda x: labelled  # logits
    bound, _ = objective._unlabelled(None, x)
    torch.testing.assert_close(bound.elbo, torch.logsumexp(labelled, 1))


def test_a_class_of_q_zero_adds_nothing_to_the_unlabelled_bound_or_its_gradient():
    """Classifier logits ~1e38 apart: log q(y|x) of the other classes underflows to -inf, and
    q log q was 0 x -inf, a NaN in U(x) and its gradient; 0 log 0 = 0 as it should be."""
    objective = M2(classes=3, data_shape=(1, 2, 2), hidden=())
    recon, kl = -torch.rand(2, 3) * 50, torch.rand(2, 3) * 10
    _with_table(objective, recon, kl)
    logits = torch.tensor([[3e38, -3e38, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    objective.classify = lambda x: logits
    bound, log_q = objective._unlabelled(None, torch.randn(2, 1, 2, 2))
    assert torch.isinf(log_q[0, 1]) and torch.isfinite(bound.elbo).all()
    # The first point's q is one-hot on class 0: U(x) = L(x, 0) = recon - kl - log 3.
    torch.testing.assert_close(bound.elbo[0], recon[0, 0] - kl[0, 0] - math.log(3))
    bound.elbo.sum().backward()
    assert torch.isfinite(logits.grad).all()


def _exact_m2():
    """The conditional linear-Gaussian model with M2's objective, q(z|x, y) exact and the
    classifier set to p(y|x): log p(y|x) = x^T S^-1 m_y - m_y^T S^-1 m_y / 2 + const, with the
    classes' means m_y = B MU[y] + C[:, y] and their shared covariance S."""
    objective = M2(classes=2, data_shape=cg.SHAPE, hidden=(), kl="mc")
    model = cg.model(objective)
    means = cg.B * cg.MU + cg.C.T  # [K, 3]
    precision = 1 / (cg.B**2 + cg.SIGMA**2)
    set_affine(objective.classifier, means * precision,
               -0.5 * (means**2 * precision).sum(1))
    return model, objective


def test_with_the_exact_posteriors_the_unlabelled_bound_is_log_p_of_x():
    model, objective = _exact_m2()
    x, y = cg.data()
    # p(x) = sum_y p(y) p(x|y), p(y) = 1/2.
    exact = torch.logsumexp(torch.stack([cg.log_p(x, torch.full_like(y, c)) for c in (0, 1)]),
                            0) - math.log(2)
    torch.testing.assert_close(objective.bound(model, x).elbo, exact, atol=1e-4, rtol=0)
    # A labelled point's bound is log p(x, y) = log p(x|y) + log p(y), here exactly.
    with model.given(y):
        loss, bound = objective.loss(model, x)
    torch.testing.assert_close(bound.elbo, cg.log_p(x, y) - math.log(2), atol=1e-4, rtol=0)
    # The loss: -mean bound + alpha * mean -log q(y|x) over the labelled points.
    log_q = torch.log_softmax(objective.classify(x), -1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(loss, -bound.elbo.mean() - 0.1 * log_q.mean(), atol=1e-4, rtol=0)
    # Points with hidden labels (-1) are scored by U(x), the others by L(x, y).
    hidden = torch.where(torch.arange(len(y)) % 2 == 0, y, -1)
    with model.given(hidden):
        _, mixed = objective.loss(model, x)
    expected = torch.where(hidden >= 0, cg.log_p(x, y) - math.log(2), exact)
    torch.testing.assert_close(mixed.elbo, expected, atol=1e-4, rtol=0)


def test_evaluation_bounds_log_p_of_x_with_the_classes_enumerated():
    """vae-eval's estimates of an M2 model: log sum_y p(y) p^(x|y) and U(x); with the exact
    posteriors both are log p(x) for any k (every weight is p(x, z|y) / p(z|x, y) = p(x|y))."""
    from vae_lightning.log_likelihood import evaluate

    model, objective = _exact_m2()
    x, y = cg.data()
    exact = torch.logsumexp(torch.stack([cg.log_p(x, torch.full_like(y, c)) for c in (0, 1)]),
                            0) - math.log(2)
    with torch.no_grad():
        results = evaluate(model, [(x, y)], k=3)
        per_point = model.log_likelihood(x, k=3)  # the Python API, no labels: the same bound
    assert results["bound_of"].startswith("log p(x), y enumerated over its 2 classes")
    assert results["iw"].nats == pytest.approx(exact.mean().item(), abs=1e-4)
    assert results["elbo"].nats == pytest.approx(exact.mean().item(), abs=1e-4)
    torch.testing.assert_close(per_point, exact, atol=1e-4, rtol=0)


def test_with_an_inexact_posterior_the_enumerated_estimate_tightens_to_log_p_of_x():
    from vae_lightning.log_likelihood import evaluate

    model, objective = _exact_m2()
    with torch.no_grad():  # q(z|x, y) off: its mean and log-scale shifted
        [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1].bias += 0.3
    x, y = cg.data()
    exact = torch.logsumexp(torch.stack([cg.log_p(x, torch.full_like(y, c)) for c in (0, 1)]),
                            0) - math.log(2)
    torch.manual_seed(0)
    with torch.no_grad():
        gaps = [(exact - model.log_likelihood(x, k=k)).mean().item() for k in (1, 100, 20000)]
        results = evaluate(model, [(x, y)], k=2000)
    assert gaps[0] > 1 > gaps[1] > 0.02 > abs(gaps[2])  # a bound, tightening with k to log p(x)
    assert results["elbo"].nats < results["iw"].nats - 0.1  # U(x) below the IW estimate


# A toy M2 with K = 3 classes whose log p(x) is known: p(y) = 1/3, p(z) = N(0, I_2),
# p(x|y, z) = N(W z + c_y, s^2 I_3), so p(x|y) = N(c_y, W W^T + s^2 I) and
# log p(x) = logsumexp_y [log p(y) + log N(x; c_y, W W^T + s^2 I)].
TOY_W = torch.tensor([[1.0, 0.8], [0.5, -1.2], [1.5, 0.3]])
TOY_C = torch.tensor([[0.0, 2.0, -1.5], [1.0, -1.0, 0.5], [-0.5, 0.5, 2.0]])  # c_y: columns
TOY_S = 0.5
TOY_SHAPE = (1, 1, 3)


def _toy_m2():
    """The toy with M2's objective; q(z|x, y) a diagonal Gaussian linear in (x, one-hot y), off
    the exact posterior (whose covariance is full): its mean shifted by 0.6, its variances the
    inverse of the precision's diagonal times e^0.3; q(y|x) = p(y|x), a linear softmax of x."""
    from functools import partial

    from vae_lightning.conditional import Conditioned
    from vae_lightning.likelihoods import Decoder, GaussianFixed
    from vae_lightning.module import VAE
    from vae_lightning.posteriors import Encoder, Gaussian
    from vae_lightning.priors import StandardNormal

    conditioned = partial(Conditioned, net=cg.LINEAR, classes=3)
    encoder = Encoder(conditioned, Gaussian(), TOY_SHAPE, latent=2)
    decoder = Decoder(conditioned, GaussianFixed(TOY_S, mean_activation="identity"), TOY_SHAPE,
                      latent=2)
    objective = M2(classes=3, data_shape=TOY_SHAPE, hidden=())
    set_affine(decoder.net.net, torch.cat([TOY_W, TOY_C], 1), torch.zeros(3))
    precision = torch.eye(2) + TOY_W.T @ TOY_W / TOY_S**2
    gain = torch.linalg.solve(precision, TOY_W.T) / TOY_S**2  # mean = gain (x - c_y)
    set_affine(encoder.net.net, torch.cat([torch.cat([gain, -gain @ TOY_C], 1),
                                           torch.zeros(2, 6)]),
               torch.cat([torch.full((2,), 0.6), 0.3 - precision.diagonal().log()]))
    inverse = torch.linalg.inv(TOY_W @ TOY_W.T + TOY_S**2 * torch.eye(3))
    set_affine(objective.classifier, TOY_C.T @ inverse,
               -0.5 * ((TOY_C.T @ inverse) * TOY_C.T).sum(1))
    model = VAE(encoder, decoder, StandardNormal(2), objective, classes=3,
                data_shape=TOY_SHAPE).eval()
    return model, objective


def _toy_data(n: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    y, z = torch.arange(n) % 3, torch.randn(n, 2)
    return (z @ TOY_W.T + TOY_C.T[y] + TOY_S * torch.randn(n, 3)).reshape(n, *TOY_SHAPE)


def _toy_log_p(x: torch.Tensor) -> torch.Tensor:
    """log p(x) by brute force over the classes, each p(x|y) Gaussian in closed form."""
    from torch.distributions import MultivariateNormal

    cov = TOY_W @ TOY_W.T + TOY_S**2 * torch.eye(3)
    per_class = torch.stack([MultivariateNormal(TOY_C[:, c], cov).log_prob(x.flatten(1))
                             for c in range(3)], -1)
    return torch.logsumexp(per_class - math.log(3), -1)


def _toy_u(model, objective, x: torch.Tensor) -> torch.Tensor:
    """M2's U(x) = sum_y q(y|x) [ELBO(x|y) + log p(y) - log q(y|x)] in closed form: for
    q(z|x, y) = N(m, diag v), E_q ||x - W z - c_y||^2 = ||x - W m - c_y||^2 + sum_j v_j |W_j|^2."""
    from torch.distributions import kl_divergence

    log_q = torch.log_softmax(objective.classify(x), -1)
    elbos = []
    for c in range(3):
        q = model.encode(x, c)
        residual = x.flatten(1) - q.mean @ TOY_W.T - TOY_C[:, c]
        squares = (residual**2).sum(1) + (q.variance * (TOY_W**2).sum(0)).sum(1)
        recon = -1.5 * math.log(2 * math.pi * TOY_S**2) - squares / (2 * TOY_S**2)
        elbos.append(recon - kl_divergence(q, model.prior.distribution()))
    return (log_q.exp() * (torch.stack(elbos, -1) - math.log(3) - log_q)).sum(-1)


def test_the_enumerated_estimate_of_a_three_class_toy_bounds_log_p_of_x_and_converges():
    """Each row of x repeated 200 times draws its own samples: the mean gap to the brute-force
    log p(x) is >= 0 (a bound in expectation), falls with k, and at k = 5000 is within a few
    standard errors of 0; the ELBO beside it is M2's U(x) (closed form), as its training bound
    estimates it."""
    from vae_lightning.objectives.base import over_labels

    model, objective = _toy_m2()
    x = _toy_data().repeat(200, 1, 1, 1)
    truth, exact_u = _toy_log_p(x), _toy_u(model, objective, x)
    torch.manual_seed(0)
    gaps, errors = [], []
    with torch.no_grad():
        for k in (1, 100, 5000):
            elbo, iw = over_labels(model, x, k, None, *objective.latent_labels(x))
            gap = truth - iw
            gaps.append(gap.mean().item())
            errors.append(gap.std().item() / math.sqrt(len(gap)))
        trained = torch.stack([objective.bound(model, x).elbo for _ in range(20)]).mean(0)
    assert all(gap > -3 * se for gap, se in zip(gaps, errors))  # <= log p(x) in expectation
    assert gaps[0] - gaps[1] > 3 * errors[0] and gaps[1] - gaps[2] > 3 * errors[1]
    assert gaps[0] > 1 and abs(gaps[2]) < 3 * errors[2]  # ... converging to it
    for estimate in (elbo, trained):  # the evaluation's ELBO is U(x), as training estimates it
        error = (estimate - exact_u).std().item() / math.sqrt(len(x))
        assert abs((estimate - exact_u).mean().item()) < 3 * error
    assert (exact_u < truth - 1).all()


def test_the_enumerated_evaluation_is_the_same_in_chunks_or_in_one_pass():
    from vae_lightning.log_likelihood import evaluate

    model, _ = _toy_m2()
    x = _toy_data()
    y = torch.arange(len(x)) % 3
    runs = []
    for chunk in (7, 50):
        torch.manual_seed(0)
        with torch.no_grad():
            runs.append((evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])], k=50, chunk=chunk),
                         model.log_likelihood(x, k=50, chunk=chunk)))
    (chunked, chunked_api), (whole, whole_api) = runs
    for name in ("iw", "elbo"):  # the same draws, summed in another order
        assert chunked[name].nats == pytest.approx(whole[name].nats, rel=1e-6)
    torch.testing.assert_close(chunked_api, whole_api, rtol=1e-6, atol=1e-5)
    assert chunked["bound_of"].startswith("log p(x), y enumerated over its 3 classes")


def test_a_stopped_enumerated_evaluation_goes_on_from_its_progress_file(tmp_path, monkeypatch,
                                                                        caplog):
    """vae-eval killed after a batch of an M2 model, then run again: the progress file's first
    batch is checked against the model with its first point's label (it was checked with the
    batch's labels for one point, refused as 'labels given for a batch of 1', and the benchmark
    row's k = 5000 evaluation could not go on), and the resumed estimates are a fresh run's."""
    from vae_lightning.log_likelihood import Progress, evaluate

    model, _ = _toy_m2()
    x = _toy_data(12)
    y = torch.arange(len(x)) % 3
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    path = tmp_path / "eval.progress.pt"

    def run(progress=None):
        torch.manual_seed(0)
        with torch.no_grad():
            return evaluate(model, batches, k=20, progress=progress)

    class Killed(BaseException):
        pass

    save = Progress.save

    def save_then_stop(self, done, *args, **kwargs):
        save(self, done, *args, **kwargs)
        if done == 2:
            raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(Progress, "save", save_then_stop)
        with pytest.raises(Killed):
            run(Progress(path, {"k": 20}))
    assert not any(part.requires_grad for part in torch.load(path)["parts"]["elbos"])
    with caplog.at_level("INFO"):
        resumed = run(Progress(path, {"k": 20}))
    assert "after its first 2 batches" in caplog.text
    fresh = run()
    for name in ("iw", "elbo"):
        assert resumed[name].nats == fresh[name].nats
    assert resumed["n"] == fresh["n"] == len(x)


def test_the_time_check_counts_a_pass_per_class(monkeypatch):
    """eval.max_hours: each batch takes K passes, one per class; at 1 s a pass, 6 points in one
    batch and k = chunk take 3 s, not 1 s."""
    import itertools
    import types

    from vae_lightning import log_likelihood

    model, _ = _toy_m2()
    x, y = _toy_data(), torch.arange(6) % 3
    clock = itertools.count()  # each reading one second after the last
    monkeypatch.setattr(log_likelihood, "time", types.SimpleNamespace(
        perf_counter=lambda: float(next(clock))))
    log_likelihood.refuse_unfinishable(model, (x, y), 6, 10, 10, max_hours=3.1 / 3600)
    with pytest.raises(ConfigError, match="about 0.000833 hours .* 3 passes a batch"):
        log_likelihood.refuse_unfinishable(model, (x, y), 6, 10, 10, max_hours=2.9 / 3600)


def test_the_labelled_subset_is_balanced_by_class_and_fixed_by_the_seed():
    y = torch.arange(1000) % 10
    chosen = balanced_subset(y, 100, seed=3)
    assert torch.equal(torch.bincount(y[chosen], minlength=10), torch.full((10,), 10))
    assert torch.equal(chosen, balanced_subset(y, 100, seed=3))
    assert not torch.equal(chosen, balanced_subset(y, 100, seed=4))
    with pytest.raises(ValueError, match="multiple of 10"):
        balanced_subset(y, 105, seed=0)
    with pytest.raises(ValueError, match="fewer than the 200 per class"):
        balanced_subset(y, 2000, seed=0)


@pytest.mark.parametrize("labelled", [7, 1000])
def test_a_labelled_count_that_cannot_be_balanced_is_refused_before_anything_is_written(
        labelled, tmp_path, monkeypatch, capsys):
    """Refused when the training split is read (before the model summary and the sanity
    check, where it was refused before), so the run directory is discarded."""
    from compose import mnist_like
    from test_hostile import run

    from vae_lightning import cli

    root = mnist_like(tmp_path / "data")
    result = run(cli.train, ["data=mnist", f"data.root={root}", "data.download=false",
                             "data.val_size=20", "model=m2", f"data.labelled={labelled}",
                             "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
                 monkeypatch, capsys, tmp_path)
    assert result.code == 2 and f"data.labelled={labelled}" in result.err
    assert "Sanity" not in result.err and not (tmp_path / "run").exists()


def test_each_minibatch_hides_its_labels_and_adds_labelled_points():
    x, y = torch.arange(50).float()[:, None], torch.arange(50) % 5
    labelled = balanced_subset(y, 10, seed=0)
    data = SemiSupervised(x, y, labelled, per_batch=4, seed=0)
    idx = torch.tensor([3, 17, 8, 40, 22, 9])
    xb, yb = data[idx]
    assert torch.equal(xb[:6, 0], idx.float()) and (yb[:6] == UNLABELLED).all()
    shown = xb[6:, 0].long()
    assert len(shown) == 4 and set(shown.tolist()) <= set(labelled.tolist())
    assert torch.equal(yb[6:], y[shown])  # the labelled points keep their labels
    again = data[idx]
    assert torch.equal(again[0], xb) and torch.equal(again[1], yb)  # the same on resume
    batches = data[[idx, idx + 1]]  # steps_per_batch: a list of minibatches
    assert len(batches) == 2 and torch.equal(batches[0][0], xb)


def test_hidden_labels_need_an_objective_that_sums_over_them(tmp_path):
    from vae_lightning.train import train

    cfg = compose_train(["model=cvae", "model/objective=elbo", "data=frey",
                         "data.labelled=10"], tmp_path)
    with pytest.raises(ConfigError, match="data.labelled=10 hides the other training labels"):
        train(cfg)



@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mnist").exists(),
                    reason="needs ../shared/data/mnist (the shared data folder)")
def test_m2_learns_to_classify_mnist_from_100_labels(tmp_path, monkeypatch):
    """experiment=m2_mnist, 400 steps: the classifier's test error falls far below chance
    (0.9), and the validation bound is a bound on log p(x) below 0."""
    import json
    import subprocess
    import sys

    from compose import REPO

    run = tmp_path / "run"
    env = {**__import__("os").environ, "VAE_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline"}
    trained = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=m2_mnist", "trainer.max_steps=400",
         "callbacks.figures=null", "callbacks.bound_curve=null", f"hydra.run.dir={run}"],
        capture_output=True, text=True, env=env, timeout=1800)
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = subprocess.run(
        [sys.executable, str(REPO / "eval.py"), f"ckpt_path={run / 'checkpoints/last.ckpt'}",
         "eval.k=2", "eval.limit=2000"], capture_output=True, text=True, env=env, timeout=1800)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    results = json.loads((run / "eval.json").read_text())
    assert results["classification_error"] < 0.6
    assert results["n"] == 2000 and results["elbo"]["nats"] < 0
