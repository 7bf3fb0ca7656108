"""The baseline beside M1+M2 in docs/evaluation.md: a logistic regression (scikit-learn) fitted
to M1's features of the labelled points alone, scored on the test split's features. What the
unlabelled points add is M2's error against this one's.

    python scripts/m1_baseline.py <M1 run>/locations.npz [--out baseline.json]

The labelled points are the balanced subset of the training split that the data module chooses
for a seed (``data.labelled.balanced_subset``), for 100, 600, 1000 and 3000 labels."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from vae_lightning.data.labelled import balanced_subset

LABELS = (100, 600, 1000, 3000)


def errors(path: str, seed: int = 0) -> dict[int, float]:
    """Test error (a fraction) of the regression per number of labels."""
    with np.load(path, allow_pickle=False) as data:
        x, y, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    found = {}
    for n in LABELS:
        chosen = balanced_subset(torch.from_numpy(y), n, seed).numpy()
        fitted = LogisticRegression(max_iter=5000).fit(x[chosen], y[chosen])
        found[n] = float((fitted.predict(x_test) != y_test).mean())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locations", help="vae-encode's locations.npz of the M1 run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the errors to this JSON file too")
    args = parser.parse_args()
    found = errors(args.locations, args.seed)
    for n, error in found.items():
        print(f"{n} labels: {100 * error:.2f} % test error")
    if args.out:
        with open(args.out, "w") as file:
            json.dump({"locations": args.locations, "seed": args.seed,
                       "test_error": {str(n): e for n, e in found.items()}}, file, indent=1)


if __name__ == "__main__":
    main()
