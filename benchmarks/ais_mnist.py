"""AIS against the k = 5000 IW estimate on a trained MNIST model, and BDMC on simulated data.

vae_lightning.ais; docs/evaluation.md, "Annealed importance sampling".

On the first ``--points`` test images (dynamically binarized by the data module's seeded stream):
the ELBO and the IW estimate with k = 5000, and AIS with 100 and ``--steps`` annealing steps from
q(z|x) (8 chains, 10 leapfrog steps); then BDMC on ``--points`` images simulated from the model:
forward AIS (a stochastic lower bound on each log p(x)), the reverse chain (an upper bound) and
the IW estimate on the same images. Prints and writes the figures to ``--out``.

Usage: python benchmarks/ais_mnist.py CHECKPOINT [--points 20] [--steps 1000] [--out FILE]
(the committed IWAE preset at its full length: benchmarks/long/iwae_k1/checkpoints/last.ckpt)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vae_lightning import VAE
from vae_lightning.ais import AIS, ais, bdmc
from vae_lightning.data import MNISTDataModule
from vae_lightning.objectives import importance_weighted

REPO = Path(__file__).resolve().parents[1]
CHAINS, LEAPFROG, K = 8, 10, 5000


def summary(result: AIS, iw: torch.Tensor, seconds: float) -> dict:
    return {"log_px": result.log_px.mean().item(), "acceptance": result.acceptance,
            "ess_min": result.ess.min().item(), "seconds": round(seconds, 1),
            "minus_iw_per_point": [round(v, 3) for v in (result.log_px - iw.double()).tolist()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a trained MNIST model's .ckpt, e.g. "
                        "benchmarks/long/iwae_k1/checkpoints/last.ckpt")
    parser.add_argument("--points", type=int, default=20,
                        help="test images, and images simulated for BDMC (default 20)")
    parser.add_argument("--steps", type=int, default=1000,
                        help="annealing steps of the long AIS run and of BDMC (default 1000)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results"
                        / "ais-mnist.json", help="the figures' JSON file (default: the "
                        "committed benchmarks/results/ais-mnist.json, which a run replaces)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = VAE.load_from_checkpoint(args.checkpoint)
    if tuple(model.data_shape) != (1, 28, 28):
        raise SystemExit(f"error: {args.checkpoint} is a model of images {list(model.data_shape)}"
                         "; this benchmark reads MNIST's test images [1, 28, 28]: evaluate other "
                         "models with vae-eval eval.ais_steps=...")
    data = MNISTDataModule(val_size=0)
    data.setup("test")
    x, _ = data.to_inputs(next(iter(data.test_dataloader())))
    x = x[: args.points]
    out: dict = {"checkpoint": args.checkpoint, "points": len(x), "chains": CHAINS,
                 "leapfrog": LEAPFROG, "k": K}
    torch.manual_seed(0)
    start = time.time()
    with torch.no_grad():
        elbo, iw = importance_weighted(model, x, K)
    out["test"] = {"elbo": elbo.mean().item(), "iw": iw.mean().item(),
                   "iw_seconds": round(time.time() - start, 1)}
    for steps in (100, args.steps):
        torch.manual_seed(0)
        start = time.time()
        result = ais(model, x, steps=steps, chains=CHAINS, leapfrog=LEAPFROG, start="posterior")
        out["test"][f"ais_{steps}"] = summary(result, iw, time.time() - start)
        print(json.dumps(out["test"][f"ais_{steps}"]), flush=True)
    torch.manual_seed(0)
    start = time.time()
    simulated, forward, reverse = bdmc(model, args.points, steps=args.steps, chains=CHAINS,
                                       leapfrog=LEAPFROG, start="posterior")
    seconds = time.time() - start
    with torch.no_grad():
        elbo, iw = importance_weighted(model, simulated, K)
    out["simulated"] = {"elbo": elbo.mean().item(), "iw": iw.mean().item(),
                        "steps": args.steps, "forward": summary(forward, iw, seconds / 2),
                        "reverse": summary(reverse, iw, seconds / 2),
                        "bracket_per_point": [round(v, 3) for v in
                                              (reverse.log_px - forward.log_px).tolist()]}
    print(json.dumps(out, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
