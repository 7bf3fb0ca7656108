"""Where a training step's time goes, against the machine's matrix-product peak.

One process, the pieces timed in turn (each repetition times every piece once, so all see the same
load; medians over repetitions), on throughput.py's model (784-400-20 MLP VAE, batch 128):
  peak      a 2048^3 float32 matrix product (FLOP/s: the peak the fractions are taken against);
  gemm      the step's matrix products alone, with the shapes and layouts F.linear and its
            backward use (forward: x W^T + b; backward: grad W = g^T x and, but at the first
            layer, grad x = g W), on random tensors;
  binarize  the data module's dynamic binarization of a uint8 batch (our data path) and the hand
            loop's ``torch.rand_like(x) < x`` on a float batch;
  hand_elbo the forward and backward of the PyTorch example's ELBO (throughput.HandVAE);
  ours      the forward and backward of our default model's loss (throughput.our_vae_loss);
  adam      one fused Adam update of the model's parameters.
Reported per piece: milliseconds per step, and the fraction of the peak the step's FLOPs
(throughput.training_flops_per_sample x 128) reach in the gemm piece and in a whole step of
hand_elbo (binarize + forward/backward + Adam).

Usage: python benchmarks/step_anatomy.py [--repeats 200] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from throughput import BATCH, HandVAE, our_vae_loss, training_flops_per_sample

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
from models import small_vae  # noqa: E402

from vae_lightning.data import MNISTDataModule  # noqa: E402

LAYERS = [(784, 400), (400, 40), (20, 400), (400, 784)]  # (in, out) of the affine layers


def gemm_pieces() -> Callable[[], None]:
    """The step's matrix products, as F.linear and autograd compute them."""
    tensors = []
    for i, (n_in, n_out) in enumerate(LAYERS):
        x, w, b = torch.randn(BATCH, n_in), torch.randn(n_out, n_in), torch.randn(n_out)
        g = torch.randn(BATCH, n_out)
        tensors.append((x, w, b, g, i > 0))

    def run() -> None:
        for x, w, b, g, input_grad in tensors:
            torch.addmm(b, x, w.t())
            g.t().mm(x)
            if input_grad:
                g.mm(w)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results"
                        / "step-anatomy-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    hand, ours = HandVAE(), small_vae((1, 28, 28), latent=20, hidden=(400,))
    adam = torch.optim.Adam(ours.parameters(), lr=1e-3, fused=True)
    dm = MNISTDataModule(binarize="dynamic")
    x8 = torch.randint(0, 256, (BATCH, 28, 28), dtype=torch.uint8)
    xf = x8.flatten(1).float() / 255
    xb = (torch.rand_like(xf) < xf).float()

    def step(model: torch.nn.Module, loss: Callable[[torch.Tensor], torch.Tensor]) -> None:
        model.zero_grad(set_to_none=True)
        loss(xb).backward()

    ours_loss = partial(our_vae_loss, ours)
    step(ours, ours_loss)  # gradients for Adam
    pieces: dict[str, Callable[[], object]] = {
        "gemm": gemm_pieces(),
        "binarize_ours": lambda: dm.to_inputs((x8, None)),
        "binarize_hand": lambda: (torch.rand_like(xf) < xf).float(),
        "hand_elbo_forward_backward": lambda: step(hand, hand.loss),
        "ours_forward_backward": lambda: step(ours, ours_loss),
        "adam": adam.step,
    }
    seconds: dict[str, list[float]] = {name: [] for name in ["peak", *pieces]}
    for i in range(args.repeats + 10):
        if i % 20 == 0:
            start = time.perf_counter()
            a @ b
            seconds["peak"].append(time.perf_counter() - start)
        for name, piece in pieces.items():
            start = time.perf_counter()
            piece()
            if i >= 10:
                seconds[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(v) for name, v in seconds.items()}
    peak = 2 * 2048**3 / min(seconds["peak"])
    step_flops = training_flops_per_sample() * BATCH
    hand_step = ms["binarize_hand"] + ms["hand_elbo_forward_backward"] + ms["adam"]
    fractions = {
        "gemm": step_flops / (ms["gemm"] / 1e3) / peak,
        "hand_elbo_step": step_flops / (hand_step / 1e3) / peak,
    }
    for name, value in ms.items():
        print(f"{name:28s} {value:8.3f} ms")
    print(f"peak {peak / 1e9:.1f} GFLOP/s; step {step_flops / 1e6:.0f} MFLOP; fraction of peak: "
          + ", ".join(f"{k} {v:.3f}" for k, v in fractions.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "what": __doc__.splitlines()[0], "threads": args.threads, "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average_at_start": load, "load_average_at_end": os.getloadavg(),
        "matmul_2048_flop_per_s": peak, "step_flops": step_flops,
        "median_ms": ms, "fraction_of_peak": fractions,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
