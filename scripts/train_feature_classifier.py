"""Train the feature classifier of a labelled data set: its penultimate layer is the feature space
in which ``vae-eval eval.sample_quality=[fid,kid,precision_recall]`` compares samples with real
images (sample_quality.FeatureNet), a feature space that exists offline.

Usage: python scripts/train_feature_classifier.py --data mnist [--root DIR] [--epochs 3]
[--seed 0] [--out FILE]

It trains on all 60,000 training images (pixel values in [0, 1], not binarized), prints the
accuracy on the 10,000 test images, and writes the weights with that accuracy to
<root>/feature_classifiers/<data>.pt (root: --root, else $VAE_DATA_DIR, else data), where
vae-eval looks for them; the weights are a cache of the data root, never part of the repository.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from vae_lightning.data import FashionMNISTDataModule, MNISTDataModule
from vae_lightning.errors import UserError
from vae_lightning.sample_quality import (
    SCRIPT_DATA,
    accuracy,
    classifier_path,
    save_classifier,
    train_classifier,
)

DATA = dict(zip(SCRIPT_DATA, (MNISTDataModule, FashionMNISTDataModule), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(DATA), required=True)
    parser.add_argument("--root", default=os.environ.get("VAE_DATA_DIR", "data"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default: <root>/feature_classifiers/<data>.pt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        datamodule = DATA[args.data](root=args.root, val_size=0, binarize="none")
        datamodule.prepare_data()
        datamodule.setup("fit")
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    x, y = datamodule.evaluation_data("train"), datamodule.splits["train"][1]
    x_test, y_test = datamodule.evaluation_data("test"), datamodule.splits["test"][1]
    start = time.perf_counter()
    net = train_classifier(x, y, epochs=args.epochs, seed=args.seed, log=print)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(net, x_test, y_test)
    out = args.out or classifier_path(args.root, datamodule.name)
    save_classifier(out, net, data=datamodule.name, test_accuracy=test_accuracy,
                    epochs=args.epochs, seed=args.seed, train_size=len(x),
                    data_sha256=dict(datamodule.digests), torch=str(torch.__version__))
    print(f"{args.data}: test accuracy {test_accuracy:.4f} after {args.epochs} epochs "
          f"({seconds:.0f} s); weights written to {out}")


if __name__ == "__main__":
    main()
