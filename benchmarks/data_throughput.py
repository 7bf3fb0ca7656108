"""Training-epoch throughput of our data path vs a plain DataLoader(TensorDataset), interleaved.

Three data modules, each against a plain loader of the same training split, both serving
float32 [B, 1, 28, 28] batches with a dynamic Bernoulli binarization per batch, on the CPU:
ours = the data module (one uint8 tensor per split, index slicing, to_inputs);
plain = DataLoader(TensorDataset(float images, labels), shuffle=True) + torch.bernoulli.
- mnist: MNISTDataModule on 60000 synthetic 28x28 IDX images (50000 after the val split);
- folder: FolderDataModule on --folder-images synthetic 28x28 grayscale PNG files (decoded once
  into its cache: the decode and the cached setup times are reported too);
- array: ArrayDataModule on a 60000x28x28 uint8 .npy file (48000 after val and test).
Usage: python benchmarks/data_throughput.py [--batch-size 100] [--rounds 5] [--folder-images 10000]
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
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from vae_lightning.data import ArrayDataModule, FolderDataModule, MNISTDataModule
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


def write_fake_folder(folder: Path, n: int) -> None:
    """``n`` 28x28 grayscale PNG files in ten class folders."""
    rng = np.random.default_rng(1)
    for i in range(n):
        sub = folder / f"class{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), np.uint8)).save(sub / f"{i:06d}.png")


def write_fake_array(path: Path) -> None:
    np.save(path, np.random.default_rng(2).integers(0, 256, (60000, 28, 28), np.uint8))


def epoch_rate(batches) -> float:
    """Run one epoch, touching every batch; return batches per second."""
    start, count = time.perf_counter(), 0
    for x, _ in batches():
        count += 1
        x.sum()  # consume the batch
    return count / (time.perf_counter() - start)


def compare(name: str, dm, batch_size: int, rounds: int) -> dict:
    """Interleaved epochs of ``dm``'s training loader and of a plain loader of its split."""
    ours_loader = dm.train_dataloader()
    x, y = dm.splits["train"]
    plain_loader = DataLoader(
        TensorDataset(x.reshape(len(x), *dm.shape).float() / 255, y), batch_size=batch_size,
        shuffle=True,
    )

    def ours():
        return (dm.to_inputs(b) for b in ours_loader)

    def plain():
        return ((torch.bernoulli(xb), yb) for xb, yb in plain_loader)

    rates = {"ours": [], "plain_tensordataset": []}
    for epoch in range(rounds):
        ours_loader.sampler.set_epoch(epoch)
        rates["ours"].append(epoch_rate(ours))
        rates["plain_tensordataset"].append(epoch_rate(plain))
        print(
            f"{name} round {epoch}: ours {rates['ours'][-1]:.0f} batches/s, "
            f"plain {rates['plain_tensordataset'][-1]:.0f} batches/s"
        )
    median = {k: statistics.median(v) for k, v in rates.items()}
    speedup = median["ours"] / median["plain_tensordataset"]
    print(
        f"{name} median: ours {median['ours']:.0f} batches/s, plain "
        f"{median['plain_tensordataset']:.0f} batches/s, ours/plain = {speedup:.1f}x"
    )
    return {
        "n_train": len(x),
        "batches_per_s": rates,
        "median_batches_per_s": median,
        "speedup": speedup,
    }


def timed_setup(make):
    start = time.perf_counter()
    dm = make()
    dm.prepare_data()
    dm.setup("fit")
    return dm, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--folder-images", type=int, default=10000)
    args = parser.parse_args()
    torch.manual_seed(0)
    common = {"batch_size": args.batch_size, "binarize": "dynamic"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_fake_mnist(tmp)
        dm = MNISTDataModule(root=str(tmp), download=False, **common)
        dm.setup("fit")
        results["mnist"] = compare("mnist", dm, args.batch_size, args.rounds)

        write_fake_folder(tmp / "images", args.folder_images)

        def folder():
            return FolderDataModule(path=str(tmp / "images"), size=28, channels=1,
                                    root=str(tmp), **common)

        _, decode_s = timed_setup(folder)  # decodes, writes the cache
        dm, cached_s = timed_setup(folder)  # reads the cache
        print(f"folder: {args.folder_images} PNG files decoded and cached in {decode_s:.2f} s; "
              f"cached setup {cached_s:.3f} s")
        results["folder"] = {**compare("folder", dm, args.batch_size, args.rounds),
                             "files": args.folder_images, "decode_and_cache_s": decode_s,
                             "cached_setup_s": cached_s}

        write_fake_array(tmp / "images.npy")
        dm, setup_s = timed_setup(lambda: ArrayDataModule(path=str(tmp / "images.npy"),
                                                          **common))
        results["array"] = {**compare("array", dm, args.batch_size, args.rounds),
                            "setup_s": setup_s}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "what": "train-epoch batches/s, float32 [B,1,28,28] with dynamic binarization, "
                        "CPU: each data module vs DataLoader(TensorDataset) of the same split",
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                **results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
