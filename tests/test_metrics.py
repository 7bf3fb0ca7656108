"""The epoch averages of the bound: BoundMean's sums, its BoundTerm views, and what a Lightning
run logs from them (the average of every training step's bound, visible to callbacks at the
epoch's end)."""

import math
import pickle

import lightning as L
import pytest
import torch
from models import SHAPE, small_vae
from torch.testing import assert_close
from torch.utils.data import DataLoader

from vae_lightning.metrics import TERMS, BoundMean, BoundTerm
from vae_lightning.objectives import Bound, Objective
from vae_lightning.objectives.elbo import ELBO


def _bounds(sizes=(5, 3, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Bound(-100 * torch.rand(n, generator=g), 10 * torch.rand(n, generator=g))
            for n in sizes]


def test_bound_mean_averages_over_data_points_not_batches():
    bounds = _bounds()
    mean = BoundMean()
    for bound in bounds:
        mean.update(bound)
    recon = torch.cat([b.recon for b in bounds])
    kl = torch.cat([b.kl for b in bounds])
    values = mean.compute()
    assert_close(values["recon"], recon.mean())
    assert_close(values["kl"], kl.mean())
    assert_close(values["elbo"], (recon - kl).mean())


def test_bound_mean_shows_a_non_finite_term():
    mean = BoundMean()
    mean.update(Bound(torch.tensor([1.0, math.nan]), torch.zeros(2)))
    assert math.isnan(mean.compute()["elbo"])


class _Counted(BoundMean):
    computations = 0

    def compute(self):
        _Counted.computations += 1
        return super().compute()


def test_terms_share_one_computation_and_one_reset():
    mean = _Counted()
    terms = {term: BoundTerm(mean, term) for term in TERMS}
    for bound in _bounds():
        mean.update(bound)
    values = {term: metric.compute() for term, metric in terms.items()}
    assert _Counted.computations == 1
    assert_close(values["elbo"], values["recon"] - values["kl"])
    terms["kl"].reset()
    assert mean.update_count == 0 and float(mean.count) == 0


def test_term_rejects_an_unknown_name_and_survives_pickling():
    with pytest.raises(ValueError, match="'nll'.*expected one of"):
        BoundTerm(BoundMean(), "nll")
    term = pickle.loads(pickle.dumps(BoundTerm(BoundMean(), "kl")))  # ddp_spawn pickles it
    assert repr(term) == "BoundTerm('kl')"


class _Record(L.Callback):
    """The train metrics a callback sees at each epoch's end, and each step's bound."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []
        self.steps: list[list[Bound]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.steps.append([])

    def on_train_epoch_end(self, trainer, module) -> None:
        metrics = trainer.callback_metrics
        self.seen.append({term: float(metrics[f"train/{term}"]) for term in TERMS})


class _Recorded(Objective):
    """``inner``'s loss and bounds, with each training step's bound recorded in ``record``."""

    def __init__(self, inner: Objective, record: _Record) -> None:
        self.inner, self.record = inner, record
        self.method = inner.method

    def loss(self, model, x):
        loss, bound = self.inner.loss(model, x)
        self.record.steps[-1].append(Bound(bound.recon.detach(), bound.kl.detach()))
        return loss, bound

    def bound(self, model, x):
        return self.inner.bound(model, x)

    def check(self, model):
        self.inner.check(model)


def test_logged_train_averages_are_every_steps_bound_and_reach_callbacks():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((96, *SHAPE), 0.3))
    record = _Record()
    model = small_vae(SHAPE, latent=2, hidden=(8,), objective=_Recorded(ELBO(), record))
    loader = DataLoader(list(zip(x, torch.zeros(96))), batch_size=40)  # 40, 40, 16
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[record],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, loader)
    assert len(record.seen) == 2
    for seen, steps in zip(record.seen, record.steps):
        recon = torch.cat([b.recon for b in steps])
        kl = torch.cat([b.kl for b in steps])
        assert len(recon) == 96
        assert seen["recon"] == pytest.approx(recon.mean().item(), rel=1e-5)
        assert seen["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
        assert seen["elbo"] == pytest.approx((recon - kl).mean().item(), rel=1e-5)
    assert record.seen[0] != record.seen[1]  # reset between epochs
