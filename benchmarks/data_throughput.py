"""Training-epoch throughput of our data path vs a plain DataLoader(TensorDataset), interleaved.

Both sides serve MNIST-sized data (60000 synthetic 28x28 images, 50000 after the val split)
as float32 [B, 784] batches with a dynamic Bernoulli binarization per batch, on the CPU:
ours = MNISTDataModule (uint8 split, index slicing, to_inputs);
plain = DataLoader(TensorDataset(float images, labels), shuffle=True) + torch.bernoulli.
Usage: python benchmarks/data_throughput.py [--batch-size 100] [--rounds 5]
Writes benchmarks/results/data_throughput.json.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from vae_lightning.data import MNISTDataModule
from vae_lightning.data.idx import write_idx

RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def write_fake_mnist(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir()
    for prefix, n in [("train", 60000), ("t10k", 10000)]:
        write_idx(
            root / "mnist" / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 256, (n, 28, 28), np.uint8),
        )
        write_idx(
            root / "mnist" / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8)
        )


def epoch_rate(batches) -> float:
    """Run one epoch, touching every batch; return batches per second."""
    start, count = time.perf_counter(), 0
    for x, _ in batches():
        count += 1
        x.sum()  # consume the batch
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_mnist(Path(tmp))
        dm = MNISTDataModule(root=tmp, batch_size=args.batch_size, download=False)
        dm.setup("fit")
    ours_loader = dm.train_dataloader()
    x, y = dm.splits["train"]
    plain_loader = DataLoader(
        TensorDataset(x.flatten(1).float() / 255, y), batch_size=args.batch_size, shuffle=True
    )

    def ours():
        return (dm.to_inputs(b) for b in ours_loader)

    def plain():
        return ((torch.bernoulli(xb), yb) for xb, yb in plain_loader)

    rates = {"ours": [], "plain_tensordataset": []}
    for epoch in range(args.rounds):
        ours_loader.sampler.set_epoch(epoch)
        rates["ours"].append(epoch_rate(ours))
        rates["plain_tensordataset"].append(epoch_rate(plain))
        print(
            f"round {epoch}: ours {rates['ours'][-1]:.0f} batches/s, "
            f"plain {rates['plain_tensordataset'][-1]:.0f} batches/s"
        )
    median = {k: statistics.median(v) for k, v in rates.items()}
    speedup = median["ours"] / median["plain_tensordataset"]
    print(
        f"median: ours {median['ours']:.0f} batches/s, plain {median['plain_tensordataset']:.0f} "
        f"batches/s, ours/plain = {speedup:.1f}x"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "what": "train-epoch batches/s, float32 [B,784] with dynamic binarization, CPU",
                "n_train": len(x),
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "batches_per_s": rates,
                "median_batches_per_s": median,
                "speedup": speedup,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
