"""vae-compare: two or more models' log p(x) estimates compared point by point.

Each model's estimate (vae-eval's eval.json) is a mean over the same test points, and its
standard error is that of one mean: most of the spread is between the points (some digits are
harder than others for every model), so two models whose intervals overlap may still differ
clearly. Paired over the same points, the difference d_i = log p_B(x_i) - log p_A(x_i) has the
standard error sd(d) / sqrt(n), which leaves out what the points share: the comparison the
tables of the literature need and rarely give.

    vae-compare runs/vae runs/iwae_k5 runs/iwae_k50

compares each run after the first with the first: the IW estimate of log p(x) and the ELBO,
the difference in nats with its paired standard error, beside each run's own. The
evaluations must be of the same points: the same split (its content, by SHA-256 as read), the
same number of points, and the same binarization (val and test are binarized by one fixed
draw, whatever vae-eval's seed); anything else is refused, one ``error:`` line and exit
code 2, as is an eval.json without per-point estimates (one written before vae-eval kept them:
run vae-eval again).
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

from vae_lightning import rundir
from vae_lightning.reports import json_files
from vae_lightning.reports.json_files import MAX_NATS, dotted, nats, optional, text, whole


class CompareError(ValueError):
    """An evaluation that cannot be compared: exit code 2."""



READ = {
    "split": (text, "a string (test, val)"),
    "k": (partial(whole, least=1), "an integer >= 1"),
    # >= 1: the paired mean of no points was a ZeroDivisionError traceback (an edited file).
    "n": (partial(whole, least=1), "an integer >= 1 (the points evaluated)"),
    "bound_of": (optional(text), "what the estimates bound, a string, or null"),
    **json_files.estimate("iw"),
    **json_files.estimate("elbo"),
    "per_point": (json_files.mapping, "an object with each point's estimates (iw, elbo)"),
    "points": (json_files.mapping, "an object saying which points (split_sha256, binarize)"),
    "points.split_sha256": (optional(text), "the split's SHA-256, a string, or null"),
    "points.binarize": (text, "a string (none, static, dynamic)"),
    # Below 2**63 (a counter of int64): a 10**400 was an OverflowError traceback in the table.
    "train_samples_seen": (optional(lambda value: whole(value) and value < 2**63),
                           "an integer from 0 to 2**63 - 1, or null"),
}
ESTIMATES = ("iw", "elbo")
FIX = "run vae-eval again to write it"


def read(path: Path) -> dict[str, Any]:
    """The evaluation ``path`` names (a run directory, or an eval.json), checked: its keys
    (``READ``) and its per-point estimates, n finite numbers each."""
    file = rundir.path(path, "eval") if path.is_dir() else path
    found = json_files.read_object(file, "the evaluation (vae-eval's eval.json)", FIX,
                                   CompareError, READ,
                                   required=("split", "k", "n", *ESTIMATES, "per_point",
                                             "points"))
    for name in ESTIMATES:
        values = found["per_point"].get(name)
        if not (isinstance(values, list) and len(values) == found["n"]
                and all(nats(v) for v in values)):  # 1e308: the paired sums overflowed
            raise CompareError(f"{file}: the evaluation's per_point.{name} is not "
                               f"{found['n']} finite numbers under {MAX_NATS:g} in size (one "
                               f"per point: n); {FIX}.")
    found["file"] = file
    return found


def check_paired(first: dict[str, Any], other: dict[str, Any]) -> None:
    """``CompareError`` unless ``other`` is of ``first``'s points, in the same order: the same
    split (its content), the same number of points, the same binarization, and a bound of the
    same quantity. Not vae-eval's seed: it draws z, while the binarized pixels of val and test
    are one fixed draw (``SPLIT_SEED``, data.datamodules ``setup``), the same in every
    evaluation (two evaluations at seeds 0 and 1 of the same points were refused as "not of
    its points", and the hours of a k = 5000 estimate had to be spent again)."""
    keys = [("split", "split"), ("points.split_sha256", "split's content (SHA-256)"),
            ("n", "number of points"), ("bound_of", "quantity bounded"),
            ("points.binarize", "binarization")]
    for key, what in keys:
        a, b = (dotted(e, key) for e in (first, other))
        if a != b or (key == "points.split_sha256" and a is None):
            raise CompareError(
                f"{other['file']} is not an evaluation of {first['file']}'s points: its "
                f"{what} is {b!r}, there {a!r}. Evaluate both on the same points (the same "
                "data, eval.split and eval.limit).")


def paired(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """The mean of b_i - a_i and its standard error sd / sqrt(n) (None for fewer than two)."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = math.fsum(d) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in d) / (n - 1) / n)


def _estimate(value: float | None, se: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" + (f" ± {se:.2f}" if se is not None else "")


def compare(paths: list[str]) -> str:
    """The table comparing the evaluations ``paths`` (each with the first), as text."""
    evaluations = [read(Path(p)) for p in paths]
    first = evaluations[0]
    for other in evaluations[1:]:
        check_paired(first, other)
    names = [str(p) for p in paths]
    width = max(map(len, names))
    n = first["n"]
    lines = [f"{n:,} {first['split']} points, the same in each; nats per data point "
             f"(± one standard error); differences with the first, paired over the points:",
             ""]
    # eval k: the evaluation's importance samples (an IWAE's training k is another number);
    # trained on: the model's training length, which a comparison at 2e5 samples does not share
    # with one at convergence.
    head = f"{'run':<{width}}  {'trained on':>12}  {'eval k':>6}  {'log p(x) (IW)':>16}  " \
           f"{'difference':>16}  {'ELBO':>16}  {'difference':>16}"
    lines += [head, "-" * len(head)]
    for i, e in enumerate(evaluations):
        seen = e.get("train_samples_seen")
        cells = [f"{names[i]:<{width}}", f"{'—' if seen is None else f'{seen:.3g}':>12}",
                 f"{e['k']:>6}"]
        for name in ESTIMATES:
            cells.append(f"{_estimate(e[name]['nats'], e[name]['nats_se']):>16}")
            if i == 0:
                cells.append(f"{'':>16}")
            else:
                mean, se = paired(first["per_point"][name], e["per_point"][name])
                cells.append(f"{('+' if mean >= 0 else '') + _estimate(mean, se):>16}")
        lines.append("  ".join(cells))
    lines += ["", "trained on: training samples seen; eval k: vae-eval's importance samples. "
                  "The paired ± is over these points, for one trained model each: it leaves out "
                  "the spread between training runs (another seed), which a claim about methods "
                  "needs (several seeds each: vae-summarize's table by setting)."]
    ks = {e["k"] for e in evaluations}
    if len(ks) > 1:
        lines += ["", "The IW estimates are of different k: each is a lower bound that rises "
                      "with k, so part of an IW difference is k's."]
    if len({e.get("train_samples_seen") for e in evaluations}) > 1:
        lines += ["", "The models were trained for different lengths (trained on): part of "
                      "each difference is the length's."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directories (their eval.json) or eval.json files; each after "
                             "the first is compared with the first")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        print("error: vae-compare needs two evaluations or more (run directories or "
              "eval.json files), the first compared with each other.", file=sys.stderr)
        return 2
    try:
        print(compare(args.runs), end="")
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
