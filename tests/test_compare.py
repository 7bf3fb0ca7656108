"""vae-compare: evaluations compared point by point. vae-eval's eval.json keeps each point's
estimates and which points they are; the paired difference is the mean of the per-point
differences with its standard error sd(d) / sqrt(n), here far below either model's own on real
data (Frey Face: the faces' spread is shared), and it equals the difference of the means; an
evaluation of other points (another split, number of points, split content, binarization), one
without per-point estimates, or a single run is refused with exit code 2."""

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from compose import compose_train

from vae_lightning.evaluate import Evaluation
from vae_lightning.reports import compare
from vae_lightning.train import train

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.figures=null", "callbacks.bound_curve=null"]


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    """Two models of Frey Face (150 steps, and 200), each evaluated on the
    same 150 test faces (k = 8), and a third evaluated on the validation split."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, steps in (("short", 150), ("long", 200)):
        torch.manual_seed(0)
        train(compose_train(["data=frey", "model.latent=2", f"trainer.max_steps={steps}",
                             *QUIET], root / name))
        runs[name] = root / name
    for name, split in (("short", "test"), ("long", "test"), ("long_val", "val")):
        run = runs[name.removesuffix("_val")]
        out = root / name / "eval" if name.endswith("_val") else run
        Evaluation(k=8, device="cpu", limit=150, split=split)(
            str(run / "checkpoints/last.ckpt"), 0, str(out))
        runs[name] = out
    return runs


def test_eval_json_keeps_each_point_and_which_points(evaluations):
    found = json.loads((evaluations["long"] / "eval.json").read_text())
    assert found["n"] == 150 and len(found["per_point"]["iw"]) == 150
    for name in ("iw", "elbo"):  # the estimates are the per-point values' means
        values = np.array(found["per_point"][name])
        assert values.mean() == pytest.approx(found[name]["nats"], abs=1e-4)
        assert values.std(ddof=1) / math.sqrt(150) == pytest.approx(found[name]["nats_se"],
                                                                    rel=1e-3)
    assert (np.array(found["per_point"]["iw"]) >= np.array(found["per_point"]["elbo"])).all()
    assert len(found["points"]["split_sha256"]) == 64 and found["points"]["binarize"] == "none"


def test_the_paired_standard_error_is_that_of_the_differences(evaluations, capsys):
    assert compare.main([str(evaluations["short"]), str(evaluations["long"])]) == 0
    table = capsys.readouterr().out
    short, long = (json.loads((evaluations[n] / "eval.json").read_text())
                   for n in ("short", "long"))
    for name in ("iw", "elbo"):
        d = np.array(long["per_point"][name]) - np.array(short["per_point"][name])
        mean, se = compare.paired(short["per_point"][name], long["per_point"][name])
        assert mean == pytest.approx(d.mean())
        assert se == pytest.approx(d.std(ddof=1) / math.sqrt(150))
        assert mean == pytest.approx(long[name]["nats"] - short[name]["nats"], abs=1e-3)
        # The faces' spread is shared by both models: the paired error is far smaller than
        # either model's own (which an unpaired comparison would add in quadrature).
        assert se < 0.5 * min(long[name]["nats_se"], short[name]["nats_se"]), (se, long, short)
        assert f"{mean:+.2f} ± {se:.2f}" in table
    assert "150 test points, the same in each" in table


def test_the_table_says_each_model_s_length_and_what_the_paired_error_leaves_out(
        evaluations, capsys):
    """Each run's training length (eval.json's train_samples_seen) and the evaluation's k are
    columns of their own; models trained for different lengths are said to be, and the paired
    ± is said to be over the points of one trained model each (not over seeds)."""
    short, long = (json.loads((evaluations[n] / "eval.json").read_text())
                   for n in ("short", "long"))
    assert short["train_samples_seen"] < long["train_samples_seen"]
    assert compare.main([str(evaluations["short"]), str(evaluations["long"])]) == 0
    table = capsys.readouterr().out
    head = next(line for line in table.splitlines() if line.startswith("run"))
    assert head.split()[1:4] == ["trained", "on", "eval"]
    for name, found in (("short", short), ("long", long)):
        line = next(line for line in table.splitlines()
                    if line.startswith(str(evaluations[name])))
        assert line.split()[1:3] == [f"{found['train_samples_seen']:.3g}", str(found["k"])]
    assert "trained for different lengths" in table
    assert "leaves out the spread between training runs" in table
    assert compare.main([str(evaluations["long"]), str(evaluations["long"])]) == 0
    assert "different lengths" not in capsys.readouterr().out


def test_paired_is_the_closed_form():
    a = [1.0, 2.0, 4.0, 8.0]
    b = [1.5, 2.0, 5.0, 8.5]
    mean, se = compare.paired(a, b)
    d = np.subtract(b, a)
    assert mean == pytest.approx(0.5) and se == pytest.approx(d.std(ddof=1) / 2)
    assert compare.paired([1.0], [3.0]) == (2.0, None)


def _edited(evaluations, tmp_path, change):
    found = json.loads((evaluations["long"] / "eval.json").read_text())
    edited = copy.deepcopy(found)
    change(edited)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(edited))
    return path


@pytest.mark.parametrize("change, words", [
    (lambda e: e.update(n=149, per_point={k: v[:149] for k, v in e["per_point"].items()}),
     "its number of points is 149, there 150"),
    (lambda e: e["points"].update(split_sha256="0" * 64), "its split's content"),
    (lambda e: e["points"].update(split_sha256=None), "its split's content"),
    (lambda e: e.update(bound_of="log p(x|y), a conditional likelihood"), "quantity bounded"),
    (lambda e: e.pop("per_point"), "has no per_point .*run vae-eval again"),
    (lambda e: e["per_point"].update(iw=e["per_point"]["iw"][:5]),
     r"per_point.iw is not 150 finite numbers"),
    (lambda e: e["per_point"]["elbo"].__setitem__(3, None), "per_point.elbo is not 150 finite"),
])
def test_evaluations_of_other_points_are_refused(evaluations, tmp_path, capsys, change, words):
    path = _edited(evaluations, tmp_path, change)
    assert compare.main([str(evaluations["long"]), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(words, err), err


def test_another_split_is_refused(evaluations, tmp_path, capsys):
    assert compare.main([str(evaluations["long"]), str(evaluations["long_val"])]) == 2
    assert "its split is 'val', there 'test'" in capsys.readouterr().err


def test_one_run_is_refused(evaluations, capsys):
    assert compare.main([str(evaluations["long"])]) == 2
    assert "needs two evaluations or more" in capsys.readouterr().err
