"""Disentanglement metrics on representations whose answer is known: the factors themselves (each
metric's best), an axis permutation and rescaling (the same scores), a random rotation (worse),
noise and a constant (the worst); a factor held by two dimensions (MIG and completeness drop,
modularity and DCI disentanglement do not). Then the options, the spread over seeds, a model's
representation, and vae-eval writing the scores into eval.json."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from compose import REPO, run_eval, train_briefly

from vae_lightning import disentanglement as dl
from vae_lightning import ground_truth as gt
from vae_lightning.args import ArgumentError
from vae_lightning.errors import ConfigError
from vae_lightning.evaluate import Evaluation

SIZES = (2, 3, 4, 5)
K = len(SIZES)
# Sample sizes small enough for seconds, large enough for the known answers.
QUICK = {"beta_vae": {"batch_size": 16, "num_train": 400, "num_eval": 300},
         "factor_vae": {"batch_size": 16, "num_train": 400, "num_eval": 300,
                        "num_variance_estimate": 1000},
         "mig": {"num_train": 3000}, "sap": {"num_train": 1000, "num_test": 500},
         "dci": {"num_train": 300, "num_test": 300}, "modularity": {"num_train": 3000}}


# Gradient boosting fits 100 trees per factor value (one per value beyond two): DCI's factors
# are binary, so that its test takes seconds.
DCI_SIZES = (2, 2, 2)


def representations(sizes=SIZES):
    """Codes of the factors (indices ``[N, K]``) whose scores are known."""
    k = len(sizes)
    values = np.asarray(sizes)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(k, k)))[0]
    permutation = np.random.default_rng(2).permutation(k)
    noise = np.random.default_rng(7)
    return {
        "factors": lambda f: f.astype(float),
        "permuted": lambda f: 3.0 * f[:, permutation] - 1.0,
        # Each factor standardised, then turned: every dimension mixes every factor.
        "rotated": lambda f: (f - (values - 1) / 2) / np.sqrt((values ** 2 - 1) / 12) @ rotation,
        "noise": lambda f: noise.normal(size=(len(f), k)),
        "constant": lambda f: np.zeros((len(f), k)),
    }


def _scores(metric, sizes=SIZES):
    return {name: dl.METRICS[metric](codes, sizes, np.random.default_rng(0), **QUICK[metric])
            for name, codes in representations(sizes).items()}


def test_beta_vae_score():
    s = {name: v["beta_vae"] for name, v in _scores("beta_vae").items()}
    assert s["factors"] == s["permuted"] == 1.0
    assert s["factors"] > s["rotated"] > s["noise"] + 0.2
    chance = 1 / K  # the majority class of the evaluation points, for a blind classifier
    assert s["constant"] == pytest.approx(chance, abs=0.07)
    assert s["noise"] == pytest.approx(chance, abs=0.1)


def test_factor_vae_score():
    found = _scores("factor_vae")
    s = {name: v["factor_vae"] for name, v in found.items()}
    assert s["factors"] == s["permuted"] == 1.0
    assert s["factors"] > s["rotated"] > s["noise"] + 0.2
    assert s["noise"] < 0.5
    # A constant has no dimension above the threshold: no vote, score 0.
    assert s["constant"] == 0.0 and found["constant"]["factor_vae_active"] == 0
    assert found["factors"]["factor_vae_active"] == K


def test_factor_vae_ignores_dimensions_of_noise_below_the_threshold():
    def codes(f):
        quiet = np.random.default_rng(len(f)).normal(scale=0.01, size=(len(f), 3))
        return np.concatenate([f.astype(float), quiet], 1)

    found = dl.factor_vae(codes, SIZES, np.random.default_rng(0), **QUICK["factor_vae"])
    assert found["factor_vae_active"] == K and found["factor_vae"] == 1.0


def test_mig():
    s = {name: v["mig"] for name, v in _scores("mig").items()}
    # Each factor has fewer values than the 20 bins: I(z_k; v_k) = H(v_k), and the others
    # share only the estimator's small positive bias.
    assert s["factors"] == pytest.approx(1.0, abs=0.01)
    assert s["permuted"] == pytest.approx(s["factors"], abs=1e-9)
    assert s["factors"] > s["rotated"] > s["noise"] + 0.1
    assert s["noise"] == pytest.approx(0.0, abs=0.01) and s["constant"] == 0.0


def test_sap():
    s = {name: v["sap"] for name, v in _scores("sap").items()}
    assert s["permuted"] == pytest.approx(s["factors"], abs=0.02)
    assert s["factors"] > s["rotated"] > s["noise"]
    assert s["noise"] == pytest.approx(0.0, abs=0.03) and s["constant"] == 0.0
    # Continuous factors: the squared correlation, 1 for the factors themselves.
    reps = representations()
    continuous = {name: dl.sap(reps[name], SIZES, np.random.default_rng(0), **QUICK["sap"],
                               continuous_factors=True)["sap"]
                  for name in ("factors", "rotated", "constant")}
    assert continuous["factors"] == pytest.approx(1.0, abs=0.01)
    assert continuous["factors"] > continuous["rotated"] > continuous["constant"] == 0.0


def test_dci():
    s = _scores("dci", DCI_SIZES)
    for score in ("dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert s["factors"][score] == pytest.approx(1.0, abs=0.01), score
        assert s["permuted"][score] == pytest.approx(s["factors"][score], abs=1e-9), score
    for score in ("dci_disentanglement", "dci_completeness"):
        assert s["noise"][score] < 0.1, score
        assert s["constant"][score] == pytest.approx(0.0, abs=1e-9), score
    # Noise and a constant predict the factors at chance.
    for name in ("noise", "constant"):
        assert s[name]["dci_informativeness"] == pytest.approx(0.5, abs=0.1)


@pytest.mark.slow
def test_dci_penalises_a_rotation():
    """With many factor values (with a few, a rotation's every dimension tells the factors'
    few combinations apart, and the trees need one dimension per factor)."""
    reps = representations()
    s = {name: dl.dci(reps[name], SIZES, np.random.default_rng(0), **QUICK["dci"])
         for name in ("factors", "rotated", "noise")}
    for score in ("dci_disentanglement", "dci_completeness"):
        assert s["factors"][score] > s["rotated"][score] + 0.2 > s["noise"][score] + 0.4, score
    assert s["rotated"]["dci_informativeness"] > 0.8  # the trees still predict the factors


def test_dci_scores_of_known_importance_matrices():
    assert dl.dci_disentanglement(np.eye(4)) == pytest.approx(1.0)
    assert dl.dci_disentanglement(np.ones((4, 4))) == pytest.approx(0.0, abs=1e-9)
    assert dl.dci_disentanglement(np.zeros((3, 3))) == pytest.approx(0.0, abs=1e-9)
    one_code_for_all = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert dl.dci_disentanglement(one_code_for_all) == pytest.approx(0.0, abs=1e-9)
    assert dl.dci_disentanglement(one_code_for_all.T) == pytest.approx(1.0)  # complete


def test_modularity():
    s = {name: v["modularity"] for name, v in _scores("modularity").items()}
    assert s["factors"] == pytest.approx(1.0, abs=0.01)
    assert s["permuted"] == pytest.approx(s["factors"], abs=1e-9)
    assert s["factors"] > s["rotated"] > s["noise"]
    assert s["constant"] == 0.0


def test_a_factor_held_by_two_dimensions():
    """z = (v0, v0, v1, v2, v3): v0's gap is 0, so MIG = (K - 1) / K; each dimension still
    holds one factor, so modularity and DCI disentanglement stay 1 while completeness drops."""
    def codes(f):
        return f[:, [0, 0, 1, 2, 3]].astype(float)

    rng = np.random.default_rng
    assert dl.mig(codes, SIZES, rng(0), **QUICK["mig"])["mig"] == pytest.approx(3 / 4, abs=0.01)
    assert dl.modularity(codes, SIZES, rng(0), **QUICK["modularity"])["modularity"] == \
        pytest.approx(1.0, abs=0.01)
    def codes3(f):
        return f[:, [0, 0, 1, 2]].astype(float)

    found = dl.dci(codes3, DCI_SIZES, rng(0), **QUICK["dci"])
    assert found["dci_disentanglement"] == pytest.approx(1.0, abs=0.01)
    assert found["dci_completeness"] < 0.95


def test_seeds_give_the_spread_and_a_metric_does_not_depend_on_the_others():
    codes = representations()["rotated"]
    options = {"mig": QUICK["mig"], "sap": QUICK["sap"]}
    found = dl.evaluate(["mig", "sap"], codes, SIZES, [0, 1, 2], options)
    both = found["scores"]
    alone = dl.evaluate(["sap"], codes, SIZES, [0, 1, 2], options)["scores"]
    assert set(both) == {"mig", "sap"} and both["sap"] == alone["sap"]
    assert set(found["seconds"]) == {"mig", "sap"}
    mig = both["mig"]
    assert len(mig["values"]) == 3 and len(set(mig["values"])) == 3
    assert mig["mean"] == pytest.approx(np.mean(mig["values"]))
    assert mig["std"] == pytest.approx(np.std(mig["values"], ddof=1))
    assert dl.evaluate(["mig"], codes, SIZES, [4], options)["scores"]["mig"]["std"] is None


def test_bad_metric_options_are_named():
    found = dl.option_problems({"mig": {"num_train": 0, "bins": 20},
                                "dci": {"rng": 3}, "fid": {}, "sap": 5})
    keys = [key for key, _, _ in found]
    assert keys == ["metric_options.mig.num_train", "metric_options.dci.rng",
                    "metric_options.fid", "metric_options.sap"]
    assert "integer >= 1" in found[0][2] and "set by the evaluation" in found[1][2]
    unknown = dl.option_problems({"mig": {"bin": 10}})
    assert unknown == [("metric_options.mig.bin", 10,
                        "not an option of mig; its options are num_train, bins")]
    assert "beta_vae, factor_vae, mig, sap, dci, modularity" in found[2][2]
    with pytest.raises(ArgumentError, match=r"metric_options.mig.num_train=0 is not allowed"):
        Evaluation(metric_options={"mig": {"num_train": 0}})
    with pytest.raises(ArgumentError, match="metric_options.mig.bin"):
        Evaluation(metric_options={"mig": {"bin": 10}})
    with pytest.raises(ArgumentError, match="metrics"):
        Evaluation(metrics=["mig", "elbo"])


# --------------------------------------------------------------------- a model, and vae-eval
def trained(overrides, run, steps):
    """A checkpoint of vae-train's config ``overrides`` trained for ``steps`` steps in ``run``,
    the model and its data module."""
    path, built = train_briefly(overrides, run, steps)
    return path, built.model.eval(), built.datamodule


@pytest.fixture(scope="module")
def dsprites_checkpoint(tmp_path_factory):
    """A dSprites (small variant) VAE trained for a few steps, its data under its own root."""
    run = tmp_path_factory.mktemp("run")
    return trained(["data=dsprites_small", f"data.root={run / 'data'}", "model.latent=4"], run,
                   20)


def test_a_model_s_representation_is_its_posterior_location(dsprites_checkpoint):
    _, model, datamodule = dsprites_checkpoint
    truth = datamodule.ground_truth()
    factors = gt.sample_factors(truth.sizes, 50, np.random.default_rng(0))
    codes = gt.model_codes(model, truth, batch_size=16)(factors)
    with torch.no_grad():
        expected = model.encoder.location(model.encoder(truth.images(factors)))
    assert codes.shape == (50, 4) and codes.dtype == np.float64
    np.testing.assert_allclose(codes, expected.double().numpy(), rtol=1e-5, atol=1e-6)


def test_vae_eval_writes_the_metrics_into_eval_json(dsprites_checkpoint, tmp_path):
    path = dsprites_checkpoint[0]
    root = path.parent.parent / "data"
    small = ["eval.metric_options.mig.num_train=500", "eval.metric_options.sap.num_train=200",
             "eval.metric_options.sap.num_test=100"]
    results = run_eval([f"ckpt_path={path}", "eval.k=2", "eval.limit=20", "eval.device=cpu",
                        f"eval.data_root={root}", "eval.metrics=[mig,sap]",
                        "eval.metric_seeds=2", *small, f"output_dir={tmp_path}"])
    saved = json.loads((tmp_path / "eval.json").read_text())
    found = saved["disentanglement"]
    assert found == results["disentanglement"]
    assert set(found["scores"]) == {"mig", "sap"} and found["seeds"] == [0, 1]
    for score in found["scores"].values():
        assert len(score["values"]) == 2 and 0 <= score["mean"] <= 1 and score["std"] >= 0
    assert found["options"]["mig"] == {"num_train": 500, "bins": 20}
    assert found["options"]["sap"] == {"num_train": 200, "num_test": 100,
                                       "continuous_factors": False}
    assert found["factors"] == {"shape": 3, "scale": 3, "orientation": 10, "position_x": 8,
                                "position_y": 8}
    assert set(found["seconds"]) == {"mig", "sap"}
    assert saved["n"] == 20 and "iw" in saved


def _eval_command(checkpoint, tmp_path, *overrides):
    """``python eval.py`` (vae-eval) on ``checkpoint``'s run, quick settings."""
    command = [sys.executable, str(REPO / "eval.py"), f"ckpt_path={checkpoint}", "eval.k=2",
               "eval.limit=10", "eval.device=cpu",
               f"eval.data_root={checkpoint.parent.parent / 'data'}",
               f"hydra.run.dir={tmp_path / 'hydra'}", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _refused_in_one_line(proc, message):
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sum(line.startswith("error:") for line in proc.stderr.splitlines()) == 1


def test_the_vae_eval_command_refuses_a_bad_metric_option_in_one_line(dsprites_checkpoint,
                                                                       tmp_path):
    proc = _eval_command(dsprites_checkpoint[0], tmp_path, "eval.metrics=[mig]",
                         "+eval.metric_options.mig.bin=3", f"output_dir={tmp_path / 'out'}")
    _refused_in_one_line(proc, "eval.metric_options.mig.bin=3 is not allowed: not an option of "
                               "mig; its options are num_train, bins")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_vae_eval_command_writes_the_metrics_into_eval_json(dsprites_checkpoint, tmp_path):
    path = dsprites_checkpoint[0]
    done = _eval_command(path, tmp_path, "eval.metrics=[mig,modularity]",
                         "eval.metric_options.mig.num_train=500",
                         "eval.metric_options.modularity.num_train=500",
                         f"output_dir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "out" / "eval.json").read_text())["disentanglement"]["scores"]
    assert set(scores) == {"mig", "modularity"}
    assert f"mig = {scores['mig']['mean']:.3f}" in done.stdout + done.stderr  # and on the console
    refused = _eval_command(path, tmp_path, "eval.metrics=[mig,fid]",
                            f"output_dir={tmp_path / 'bad'}")
    _refused_in_one_line(refused, "eval.metrics=['mig', 'fid'] is not allowed")


def test_metrics_on_data_without_factors_are_refused_before_the_bound(tmp_path):
    path = trained(["data=frey", "model.latent=2"], tmp_path, 1)[0]
    with pytest.raises(ConfigError, match=r"eval.metrics=\['mig'\].*data=frey.*data=dsprites"):
        run_eval([f"ckpt_path={path}", "eval.device=cpu", "eval.metrics=[mig]",
                  f"output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out" / "eval.json").exists()


# ------------------------------------------- disentanglement_lib's definitions, transcribed
# Each reference below is disentanglement_lib's code (evaluation/metrics/*.py, utils.py) in
# numpy, representations as [N, D] (it keeps them as [D, N]); ours must give the same numbers on
# an entangled, nonlinear representation with an inactive dimension.
MIXING = np.random.default_rng(5).normal(size=(K, 5))


def entangled(f):
    """Five dimensions, each a nonlinear mixture of the factors; the first almost constant."""
    values = np.asarray(SIZES)
    z = np.tanh(((f - (values - 1) / 2) / values) @ MIXING)
    z[:, 4] += 0.3 * np.sin(7.0 * f @ np.array([1.0, 2.0, 3.0, 5.0]))
    z[:, 0] *= 1e-3  # below FactorVAE's threshold
    return z


def _dl_discretize(mus, num_bins=20):
    """utils._histogram_discretize."""
    out = np.zeros_like(mus, dtype=np.int64)
    for i in range(mus.shape[1]):
        out[:, i] = np.digitize(mus[:, i], np.histogram(mus[:, i], num_bins)[1][:-1])
    return out


def _dl_mutual_info(mus, ys):
    """utils.discrete_mutual_info: [D, K]."""
    from sklearn.metrics import mutual_info_score

    return np.array([[mutual_info_score(ys[:, j], mus[:, i]) for j in range(ys.shape[1])]
                     for i in range(mus.shape[1])])


def _dl_mig(mus, ys):
    """mig._compute_mig."""
    from sklearn.metrics import mutual_info_score

    m = _dl_mutual_info(_dl_discretize(mus), ys)
    entropy = np.array([mutual_info_score(ys[:, j], ys[:, j]) for j in range(ys.shape[1])])
    sorted_m = np.sort(m, axis=0)[::-1]
    return np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], entropy[:]))


def _dl_modularity(mus, ys):
    """modularity_explicitness.modularity of the discretized mutual information."""
    squared_mi = np.square(_dl_mutual_info(_dl_discretize(mus), ys))
    max_squared_mi = np.max(squared_mi, axis=1)
    numerator = np.sum(squared_mi, axis=1) - max_squared_mi
    denominator = max_squared_mi * (squared_mi.shape[1] - 1.)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 1. - numerator / denominator
    score[max_squared_mi == 0.] = 0.
    return np.mean(score)


def _dl_sap(mus, ys, mus_test, ys_test, continuous_factors):
    """sap_score._compute_score_matrix and _compute_avg_diff_top_two."""
    from sklearn import svm

    matrix = np.zeros((mus.shape[1], ys.shape[1]))
    for i in range(mus.shape[1]):
        for j in range(ys.shape[1]):
            if continuous_factors:
                cov = np.cov(mus[:, i], ys[:, j], ddof=1)
                if cov[0, 0] > 1e-12:
                    matrix[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
            else:
                classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
                classifier.fit(mus[:, i][:, None], ys[:, j])
                pred = classifier.predict(mus_test[:, i][:, None])
                matrix[i, j] = np.mean(pred == ys_test[:, j])
    ordered = np.sort(matrix, axis=0)
    return np.mean(ordered[-1, :] - ordered[-2, :])


def _dl_dci(mus, ys, mus_test, ys_test, seeds):
    """dci._compute_dci: importances of GradientBoostingClassifier(), D, C and I. Its trees
    break ties between equally good splits at random: ``seeds`` are the random states ours
    draws, so that both break them alike."""
    import scipy.stats
    from sklearn import ensemble

    importance = np.zeros((mus.shape[1], ys.shape[1]))
    test = []
    for j in range(ys.shape[1]):
        model = ensemble.GradientBoostingClassifier(random_state=seeds[j]).fit(mus, ys[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        test.append(np.mean(model.predict(mus_test) == ys_test[:, j]))
    per_code = 1. - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])
    per_factor = 1. - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0])
    return (np.sum(per_code * importance.sum(1) / importance.sum()),
            np.sum(per_factor * importance.sum(0) / importance.sum()), np.mean(test))


def test_mig_and_modularity_are_disentanglement_lib_s():
    rng = np.random.default_rng
    ys = gt.sample_factors(SIZES, 3000, rng(0))  # the draw each metric makes first
    mig = dl.mig(entangled, SIZES, rng(0), num_train=3000)["mig"]
    modularity = dl.modularity(entangled, SIZES, rng(0), num_train=3000)["modularity"]
    assert mig == pytest.approx(_dl_mig(entangled(ys), ys), abs=1e-12)
    assert modularity == pytest.approx(_dl_modularity(entangled(ys), ys), abs=1e-12)
    assert 0.0 < mig < 0.5 and 0.0 < modularity < 0.9  # entangled: far from 1


def test_sap_and_dci_are_disentanglement_lib_s():
    rng = np.random.default_rng(0)
    train, test = gt.sample_factors(SIZES, 1000, rng), gt.sample_factors(SIZES, 500, rng)
    z, z_test = entangled(train), entangled(test)
    for continuous in (True, False):
        ours = dl.sap(entangled, SIZES, np.random.default_rng(0), num_train=1000, num_test=500,
                      continuous_factors=continuous)["sap"]
        assert ours == pytest.approx(_dl_sap(z, train, z_test, test, continuous), abs=1e-9)
    rng = np.random.default_rng(0)
    train, test = gt.sample_factors(DCI_SIZES, 300, rng), gt.sample_factors(DCI_SIZES, 300, rng)
    seeds = [dl._seed(rng) for _ in DCI_SIZES]

    def codes(f):
        return entangled(np.concatenate([f, f[:, :1]], 1))  # three factors into five dims

    ours = dl.dci(codes, DCI_SIZES, np.random.default_rng(0), num_train=300, num_test=300)
    reference = _dl_dci(codes(train), train, codes(test), test, seeds)
    found = (ours["dci_disentanglement"], ours["dci_completeness"], ours["dci_informativeness"])
    assert found == pytest.approx(reference, abs=1e-6)


def test_the_beta_vae_score_is_disentanglement_lib_s():
    """Each point's feature is mean |z1 - z2| over pairs sharing the fixed factor k only, and the
    score is a logistic regression's accuracy on new points (disentanglement_lib's
    beta_vae._generate_training_sample and _compute_beta_vae_sklearn)."""
    from sklearn.linear_model import LogisticRegression

    seen = []

    def codes(f):
        seen.append(f.copy())
        return entangled(f)

    features, k = dl._beta_vae_points(codes, SIZES, np.random.default_rng(3), 8, 40)
    first, second = (f.reshape(40, 8, K) for f in seen)
    for i in range(40):
        assert (first[i, :, k[i]] == second[i, :, k[i]]).all()
        others = [j for j in range(K) if j != k[i]]
        assert (first[i][:, others] != second[i][:, others]).any()  # drawn independently
    expected = np.abs(entangled(first.reshape(-1, K)) - entangled(second.reshape(-1, K)))
    np.testing.assert_allclose(features, expected.reshape(40, 8, -1).mean(1))

    rng = np.random.default_rng(0)
    train = dl._beta_vae_points(entangled, SIZES, rng, 16, 400)
    evaluation = dl._beta_vae_points(entangled, SIZES, rng, 16, 300)
    reference = LogisticRegression().fit(*train).score(*evaluation)
    ours = dl.beta_vae(entangled, SIZES, np.random.default_rng(0), batch_size=16, num_train=400,
                       num_eval=300)
    assert ours["beta_vae"] == pytest.approx(reference, abs=1e-12)


def test_the_factor_vae_votes_are_disentanglement_lib_s():
    """Each batch fixes one factor; the active dimension of least variance (ddof 1) relative to
    its variance over the data votes for it (factor_vae._generate_training_sample), the vote
    counted at that dimension's own index; the score is sum_j votes[argmax_k, j] / votes."""
    seen = []

    def codes(f):
        seen.append(f.copy())
        return entangled(f)

    scale = entangled(gt.sample_factors(SIZES, 2000, np.random.default_rng(1))).var(0, ddof=1)
    active = np.flatnonzero(np.sqrt(scale) >= 0.05)
    assert active.tolist() == [1, 2, 3, 4]  # the first dimension is inactive
    votes = dl._factor_vae_votes(codes, SIZES, np.random.default_rng(2), 16, 200, scale, active)
    batches = seen[0].reshape(200, 16, K)
    fixed = np.random.default_rng(2).integers(K, size=200)  # its first draw: each batch's k
    expected = np.zeros((K, 5), np.int64)
    for batch, k in zip(batches, fixed):
        assert (batch[:, k] == batch[0, k]).all()
        argmin = np.argmin(entangled(batch).var(0, ddof=1)[active] / scale[active])
        # disentanglement_lib counts the vote at argmin, the position among the active
        # dimensions; the dimension that voted is active[argmin].
        expected[k, active[argmin]] += 1
    np.testing.assert_array_equal(votes, expected)
    assert votes[:, 0].sum() == 0
    found = dl.factor_vae(entangled, SIZES, np.random.default_rng(0), **QUICK["factor_vae"])
    assert 0.0 < found["factor_vae"] < 1.0 and found["factor_vae_active"] == 4
