"""Disentanglement metrics of a representation against ground-truth factors, with the definitions
and default sample sizes of disentanglement_lib (Locatello et al. 2019, its
``unsupervised_study_v1`` settings):

- ``beta_vae`` (Higgins et al. 2017): each point fixes one factor k over a batch of pairs, the
  feature is the mean |z1 - z2| over the pairs; a logistic regression predicts k from it; the
  score is its accuracy on new points;
- ``factor_vae`` (Kim & Mnih 2018): each point fixes factor k over a batch; the dimension with
  the least variance over the batch, relative to its variance over the data, votes for k
  (dimensions with a standard deviation below ``threshold`` are left out); a majority vote maps
  dimensions to factors; the score is its accuracy on new votes;
- ``mig`` (Chen et al. 2018): per factor, the gap between the two largest mutual informations
  I(z_j; v_k) (each dimension discretized into ``bins`` equal-width bins), over H(v_k); averaged;
- ``sap`` (Kumar et al. 2018): per factor, the gap between the two best dimensions at predicting
  it alone (a linear SVM's test accuracy for discrete factors; the squared correlation for
  continuous ones); averaged;
- ``dci`` (Eastwood & Williams 2018): gradient boosted trees predict each factor from z; their
  feature importances R_jk give the disentanglement 1 - H_K(R_j.) of each dimension and the
  completeness 1 - H_D(R_.k) of each factor, weighted by importance, and the informativeness
  (the trees' test accuracy);
- ``modularity`` (Ridgeway & Mozer 2018): per dimension, how much of its squared mutual
  information goes to one factor: 1 - (sum_k I_jk^2 - max_k I_jk^2) / (max_k I_jk^2 (K - 1)).

A metric sees the representation through ``codes``: factor indices ``[N, K]`` to codes
``[N, D]`` (for a model, the posterior's location of the images of those factors). Factors are
drawn uniformly from the product of their values, as disentanglement_lib draws them (both in
``ground_truth``).
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vae_lightning.args import NonNegativeFloat, PositiveInt, problems
from vae_lightning.ground_truth import Codes, sample_factors


def beta_vae(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
             batch_size: PositiveInt = 64, num_train: PositiveInt = 10000,
             num_eval: PositiveInt = 5000) -> dict[str, float]:
    """The BetaVAE score: ``beta_vae`` the accuracy on ``num_eval`` new points of a logistic
    regression trained on ``num_train`` points of ``batch_size`` pairs; ``beta_vae_train``
    its accuracy on its training points."""
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = _beta_vae_points(codes, sizes, rng, batch_size, num_train)
    eval_x, eval_y = _beta_vae_points(codes, sizes, rng, batch_size, num_eval)
    classifier = LogisticRegression(random_state=_seed(rng))
    with warnings.catch_warnings():  # a representation that separates perfectly converges late
        warnings.simplefilter("ignore")
        classifier.fit(train_x, train_y)
    return {"beta_vae": float(classifier.score(eval_x, eval_y)),
            "beta_vae_train": float(classifier.score(train_x, train_y))}


def _beta_vae_points(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
                     batch_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points: the fixed factor k of each, and the mean |z1 - z2| over its pairs."""
    k = rng.integers(len(sizes), size=n)
    first = sample_factors(sizes, n * batch_size, rng).reshape(n, batch_size, -1)
    second = sample_factors(sizes, n * batch_size, rng).reshape(n, batch_size, -1)
    points = np.arange(n)
    second[points, :, k] = first[points, :, k]
    z1, z2 = (codes(f.reshape(n * batch_size, -1)).reshape(n, batch_size, -1)
              for f in (first, second))
    return np.abs(z1 - z2).mean(1), k


def factor_vae(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
               batch_size: PositiveInt = 64, num_train: PositiveInt = 10000,
               num_eval: PositiveInt = 5000, num_variance_estimate: PositiveInt = 10000,
               threshold: NonNegativeFloat = 0.05) -> dict[str, float]:
    """The FactorVAE score: ``factor_vae`` the accuracy of the majority-vote classifier (from
    ``num_train`` votes) on ``num_eval`` new votes, ``factor_vae_train`` on its own votes, and
    ``factor_vae_active`` the dimensions whose standard deviation over
    ``num_variance_estimate`` points reaches ``threshold`` (0 of them: every score is 0)."""
    scale = codes(sample_factors(sizes, num_variance_estimate, rng)).var(0, ddof=1)
    active = np.flatnonzero(np.sqrt(scale) >= threshold)
    if len(active) == 0:
        return {"factor_vae": 0.0, "factor_vae_train": 0.0, "factor_vae_active": 0}
    train = _factor_vae_votes(codes, sizes, rng, batch_size, num_train, scale, active)
    evaluation = _factor_vae_votes(codes, sizes, rng, batch_size, num_eval, scale, active)
    factor_of = train.argmax(0)  # each dimension's factor (the first on a tie, or no vote)
    dims = np.arange(train.shape[1])
    return {"factor_vae": float(evaluation[factor_of, dims].sum() / evaluation.sum()),
            "factor_vae_train": float(train[factor_of, dims].sum() / train.sum()),
            "factor_vae_active": len(active)}


def _factor_vae_votes(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
                      batch_size: int, n: int, scale: np.ndarray,
                      active: np.ndarray) -> np.ndarray:
    """Votes ``[K, D]``: for each of ``n`` batches with one factor fixed, the active dimension
    of least variance relative to ``scale`` votes for that factor."""
    k = rng.integers(len(sizes), size=n)
    factors = sample_factors(sizes, n * batch_size, rng).reshape(n, batch_size, -1)
    points = np.arange(n)
    factors[points, :, k] = factors[points, 0, k][:, None]
    z = codes(factors.reshape(n * batch_size, -1)).reshape(n, batch_size, -1)
    ratio = z.var(1, ddof=1)[:, active] / scale[active]
    votes = np.zeros((len(sizes), len(scale)), np.int64)
    np.add.at(votes, (k, active[ratio.argmin(1)]), 1)
    return votes


def mig(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
        num_train: PositiveInt = 10000, bins: PositiveInt = 20) -> dict[str, float]:
    """The mutual information gap of ``num_train`` points, ``mig``."""
    factors = sample_factors(sizes, num_train, rng)
    info = mutual_information(discretize(codes(factors), bins), factors)
    entropy = np.array([_mutual_info(f, f) for f in factors.T])
    top = np.sort(info, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(len(sizes))
    return {"mig": float(np.mean((top[0] - second) / entropy))}


def sap(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
        num_train: PositiveInt = 10000, num_test: PositiveInt = 5000,
        continuous_factors: bool = False) -> dict[str, float]:
    """The SAP score, ``sap``: discrete factors (default) are predicted from each dimension
    alone by a linear SVM (C = 0.01, balanced class weights) trained on ``num_train`` points
    and scored by its accuracy on ``num_test``; continuous ones by the squared correlation."""
    train = sample_factors(sizes, num_train, rng)
    test = sample_factors(sizes, num_test, rng)
    z_train, z_test = codes(train), codes(test)
    score = np.zeros((z_train.shape[1], len(sizes)))
    for j in range(z_train.shape[1]):
        for k in range(len(sizes)):
            score[j, k] = (_squared_correlation(z_train[:, j], train[:, k]) if continuous_factors
                           else _svm_accuracy(z_train[:, j], train[:, k], z_test[:, j],
                                              test[:, k], rng))
    top = np.sort(score, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(len(sizes))
    return {"sap": float(np.mean(top[0] - second))}


def _squared_correlation(z: np.ndarray, v: np.ndarray) -> float:
    """Cov(z, v)^2 / (Var z Var v), 0 for a dimension that does not vary."""
    cov = np.cov(z, v, ddof=1)
    return float(cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])) if cov[0, 0] > 1e-12 else 0.0


def _svm_accuracy(z: np.ndarray, v: np.ndarray, z_test: np.ndarray, v_test: np.ndarray,
                  rng: np.random.Generator) -> float:
    from sklearn.svm import LinearSVC

    classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=_seed(rng))
    with warnings.catch_warnings():  # liblinear's convergence notice on one feature
        warnings.simplefilter("ignore")
        classifier.fit(z[:, None], v)
    return float(np.mean(classifier.predict(z_test[:, None]) == v_test))


def dci(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
        num_train: PositiveInt = 10000, num_test: PositiveInt = 5000) -> dict[str, float]:
    """Disentanglement, completeness and informativeness: ``dci_disentanglement``,
    ``dci_completeness``, ``dci_informativeness`` (the trees' mean test accuracy over the
    factors, on ``num_test`` points) and ``dci_informativeness_train``, from scikit-learn's
    ``GradientBoostingClassifier`` (its defaults) trained on ``num_train`` points."""
    from sklearn.ensemble import GradientBoostingClassifier

    train = sample_factors(sizes, num_train, rng)
    test = sample_factors(sizes, num_test, rng)
    z_train, z_test = codes(train), codes(test)
    importance = np.zeros((z_train.shape[1], len(sizes)))
    accuracy_train, accuracy_test = [], []
    for k in range(len(sizes)):
        trees = GradientBoostingClassifier(random_state=_seed(rng)).fit(z_train, train[:, k])
        importance[:, k] = np.abs(trees.feature_importances_)
        accuracy_train.append(np.mean(trees.predict(z_train) == train[:, k]))
        accuracy_test.append(np.mean(trees.predict(z_test) == test[:, k]))
    return {"dci_disentanglement": dci_disentanglement(importance),
            "dci_completeness": dci_disentanglement(importance.T),
            "dci_informativeness": float(np.mean(accuracy_test)),
            "dci_informativeness_train": float(np.mean(accuracy_train))}


def dci_disentanglement(importance: np.ndarray) -> float:
    """Sum over rows j of rho_j (1 - H_K(P_j)), P_j row j of ``importance`` ``[D, K]``
    normalised, H_K the entropy in base K, rho_j the row's share of the total (uniform when
    nothing is important). On the transpose: the completeness."""
    from scipy.stats import entropy

    columns = importance.shape[1]
    per_row = (1.0 - entropy(importance.T + 1e-11, base=columns) if columns > 1
               else np.ones(len(importance)))
    total = importance.sum()
    weights = (importance.sum(1) / total if total > 0
               else np.full(len(importance), 1 / len(importance)))
    return float(np.sum(per_row * weights))


def modularity(codes: Codes, sizes: Sequence[int], rng: np.random.Generator,
               num_train: PositiveInt = 10000, bins: PositiveInt = 20) -> dict[str, float]:
    """Modularity, ``modularity``: the mean over dimensions of
    1 - (sum_k I_jk^2 - max_k I_jk^2) / (max_k I_jk^2 (K - 1)), 0 for a dimension that carries
    no information (``num_train`` points, ``bins`` bins per dimension)."""
    factors = sample_factors(sizes, num_train, rng)
    squared = mutual_information(discretize(codes(factors), bins), factors) ** 2
    largest = squared.max(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_dim = 1.0 - (squared.sum(1) - largest) / (largest * (len(sizes) - 1))
    per_dim[largest == 0] = 0.0
    return {"modularity": float(np.mean(per_dim))}


def discretize(z: np.ndarray, bins: int) -> np.ndarray:
    """Each column of ``z`` ``[N, D]`` as the index of its equal-width histogram bin."""
    out = np.zeros(z.shape, np.int64)
    for j in range(z.shape[1]):
        edges = np.histogram(z[:, j], bins)[1]
        out[:, j] = np.digitize(z[:, j], edges[:-1])
    return out


def mutual_information(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The empirical mutual information (nats) of each discrete code dimension and factor:
    ``[D, K]``."""
    return np.array([[_mutual_info(v, c) for v in factors.T] for c in codes.T])


def _mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import mutual_info_score

    return float(mutual_info_score(a, b))


def _seed(rng: np.random.Generator) -> int:
    """A seed for a scikit-learn estimator, drawn from the metric's stream."""
    return int(rng.integers(2**31 - 1))


METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "beta_vae": beta_vae, "factor_vae": factor_vae, "mig": mig, "sap": sap, "dci": dci,
    "modularity": modularity,
}
NOT_OPTIONS = ("codes", "sizes", "rng")  # the arguments every metric takes from the evaluation


def option_problems(options: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Any, str]]:
    """``(key, value, accepted)`` for each metric option that is not a known metric's, or that
    its metric's annotations refuse (``metric_options.<metric>.<option>``)."""
    found = []
    for name, values in options.items():
        if name not in METRICS:
            found.append((f"metric_options.{name}", dict(values) if isinstance(values, Mapping)
                          else values, "not a metric; the metrics are " + ", ".join(METRICS)))
            continue
        if not isinstance(values, Mapping):
            found.append((f"metric_options.{name}", values, "expected a mapping of options"))
            continue
        known = metric_options(name)
        for key, value in values.items():
            if key in NOT_OPTIONS:
                found.append((f"metric_options.{name}.{key}", value,
                              "set by the evaluation, not an option"))
            elif key not in known:
                found.append((f"metric_options.{name}.{key}", value,
                              f"not an option of {name}; its options are " + ", ".join(known)))
        found += [(f"metric_options.{name}.{key}", value, accepted) for key, value, accepted
                  in problems(METRICS[name], {k: v for k, v in values.items() if k in known})]
    return found


def metric_options(name: str) -> dict[str, Any]:
    """The options of the metric ``name`` with their defaults (its arguments but those the
    evaluation sets)."""
    return {key: p.default for key, p in inspect.signature(METRICS[name]).parameters.items()
            if key not in NOT_OPTIONS}


def evaluate(names: Sequence[str], codes: Codes, sizes: Sequence[int], seeds: Sequence[int],
             options: Mapping[str, Mapping[str, Any]] | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Each metric of ``names`` once per seed (each run from a fresh ``default_rng(seed)``, so
    a metric's values do not depend on which others run): ``{"scores": {score: {"mean", "std",
    "values"}}, "seconds": {metric: its time over the seeds}}`` (std: the sample standard
    deviation over the seeds, None for one seed)."""
    values: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        for seed in seeds:
            if log is not None:
                log(f"{name} (seed {seed})")
            found = METRICS[name](codes, sizes, np.random.default_rng(seed),
                                  **dict((options or {}).get(name, {})))
            for score, value in found.items():
                values.setdefault(score, []).append(float(value))
        seconds[name] = round(time.perf_counter() - start, 1)
    scores = {score: {"mean": float(np.mean(v)),
                      "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                      "values": v} for score, v in values.items()}
    return {"scores": scores, "seconds": seconds}
