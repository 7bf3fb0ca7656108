"""The training step on a GPU: our train.py pipeline against a hand loop captured as a CUDA graph.

The paper's MNIST model (experiment=aevb_mnist: 784-500-Nz tanh MLPs, Bernoulli decoder,
analytic KL, L = 1, Adagrad lr 0.02 (fused where torch has it: the CPU), minibatch 100,
Nz = 20) on MNIST-sized data (the real MNIST under --root, else synthetic IDX files), dynamic
binarization of every minibatch on both sides, the data resident on the device:

  hand_graph = a hand-written loop: each step gathers its minibatch by index from the split on
      the device, binarizes it, copies it into the static input of a CUDA graph that holds the
      whole step (our model's loss, the backward pass and the optimizer update) and
      replays it: the fastest this model trains from Python, a handful of launches per step;
  ours = `train.py experiment=aevb_mnist model.cuda_graph=true data.on_device=true
      data.steps_per_batch=K` (Lightning's Trainer, our callbacks and logger): each step replays
      the graph of the loss and gradients and takes the update through Lightning;
  ours_eager = the same without model.cuda_graph (K steps per batch, eager steps).

The sides run in turn, --rounds times, each for --steps timed optimizer steps after --warmup
untimed ones (ours: the steps between two batches' ends, from a callback, synchronised).
Reported: samples/s of each and ours / hand_graph (the issue's target: >= 0.8). Without CUDA it
runs the same sides on the CPU, eagerly (a dry run of the script; the figures mean nothing).
Usage: python benchmarks/gpu_step.py [--rounds 3] [--steps 2000] [--warmup 200]
       [--steps-per-batch 100] [--root DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
sys.path.append(str(REPO / "benchmarks"))
from compose import compose_train  # noqa: E402
from data_throughput import write_fake_mnist  # noqa: E402

from vae_lightning.errors import Diverged  # noqa: E402
from vae_lightning.optimization import on_device  # noqa: E402
from vae_lightning.train import build_run, train  # noqa: E402

BATCH = 100


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class HandGraph:
    """The hand loop: the whole step (loss, backward, fused update) as one CUDA graph."""

    def __init__(self, cfg, x_train: torch.Tensor, device: torch.device) -> None:
        self.model = build_run(cfg).model.to(device)
        self.optimizer = on_device(self.model.optimizer, list(self.model.parameters()))
        for group in self.optimizer.param_groups:  # a captured update reads its step on device
            if "capturable" in group:
                group["capturable"] = True
        self.x_train, self.device = x_train, device
        self.static_x = torch.zeros(BATCH, 1, 28, 28, device=device)
        self.perm = torch.randperm(len(x_train), device=device)
        self.position = 0
        self.graph = None
        if device.type == "cuda":
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._step()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self._step()

    def _step(self) -> None:
        """Loss, backward (into gradients that are None before it: written, not accumulated,
        when replayed) and the fused update."""
        loss, _ = self.model.objective.loss(self.model, self.static_x)
        loss.backward()
        self.optimizer.step()

    def step(self) -> None:
        if self.position + BATCH > len(self.perm):
            self.perm = torch.randperm(len(self.x_train), device=self.device)
            self.position = 0
        idx = self.perm[self.position:self.position + BATCH]
        self.position += BATCH
        x = self.x_train[idx]
        self.static_x.copy_((torch.rand(x.shape, device=self.device) < x).float())
        if self.graph is not None:
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._step()


class StepClock(L.Callback):
    """Times the training steps from ``start`` to ``stop`` (whole batches), synchronised, and
    writes samples/s to the JSON file ``path``; then stops the run."""

    def __init__(self, path: str, start: int, stop: int) -> None:
        self.path, self.start, self.stop = Path(path), start, stop
        self.began: float | None = None
        self.first = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.began is None and trainer.global_step >= self.start:
            self.began, self.first = _sync(pl_module.device), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.began is not None and trainer.global_step >= self.stop and not trainer.should_stop:
            seconds = _sync(pl_module.device) - self.began
            steps = trainer.global_step - self.first
            self.path.write_text(json.dumps({"samples_per_s": steps * BATCH / seconds}))
            trainer.should_stop = True


def ours(common: list[str], out: Path, warmup: int, steps: int, graph: bool) -> float:
    """Samples/s of train.py's steps from ``warmup`` to ``warmup + steps``."""
    record = out / "clock.json"
    out.mkdir(parents=True)
    cfg = compose_train([*common, f"model.cuda_graph={str(graph).lower()}",
                         "~callbacks.bound_curve", "~callbacks.figures",
                         "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                         "+callbacks.clock._target_=gpu_step.StepClock",
                         f"+callbacks.clock.path={record}", f"+callbacks.clock.start={warmup}",
                         f"+callbacks.clock.stop={warmup + steps}"], out)
    try:
        train(cfg)
    except Diverged:  # judged on a partial epoch (synthetic data, a few steps): not timed
        pass
    return json.loads(record.read_text())["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--steps-per-batch", type=int, default=100)
    parser.add_argument("--root", type=Path, help="a data root holding mnist/ (else synthetic)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                        "gpu-step.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.root
        if root is None:
            write_fake_mnist(tmp)
            root = tmp
        common = ["experiment=aevb_mnist", f"data.root={root}", "data.download=false",
                  "logger=none", "trainer.enable_progress_bar=false",
                  "trainer.enable_model_summary=false", "trainer.max_samples=null",
                  f"data.steps_per_batch={args.steps_per_batch}",
                  *(["trainer.accelerator=gpu", "data.on_device=true"] if device.type == "cuda"
                    else ["trainer.accelerator=cpu"])]
        cfg = compose_train(common, tmp / "hand")
        dm = build_run(cfg).datamodule
        dm.setup("fit")
        x_train = dm.splits["train"][0].to(device).float().div(dm.scale).reshape(-1, 1, 28, 28)
        rates: dict[str, list[float]] = {"hand_graph": [], "ours": [], "ours_eager": []}
        for r in range(args.rounds):
            hand = HandGraph(cfg, x_train, device)
            for _ in range(args.warmup):
                hand.step()
            start = _sync(device)
            for _ in range(args.steps):
                hand.step()
            rates["hand_graph"].append(args.steps * BATCH / (_sync(device) - start))
            rates["ours"].append(ours(common, tmp / f"ours{r}", args.warmup, args.steps, True))
            rates["ours_eager"].append(ours(common, tmp / f"eager{r}", args.warmup, args.steps,
                                            False))
            ratio = rates["ours"][-1] / rates["hand_graph"][-1]
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
                  + f" samples/s; ours/hand_graph {ratio:.3f}", flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    record: dict[str, Any] = {
        "what": "training samples/s, the paper's MNIST model (experiment=aevb_mnist, Nz 20, "
                "batch 100, Adagrad), data on the device; hand_graph: the whole step as "
                "one CUDA graph; ours: train.py with model.cuda_graph=true and "
                f"data.steps_per_batch={args.steps_per_batch}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "lightning": L.__version__,
        "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
        "samples_per_s": rates, "median_samples_per_s": median,
        "ours_over_hand_graph": median["ours"] / median["hand_graph"],
        "ours_eager_over_hand_graph": median["ours_eager"] / median["hand_graph"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"median samples/s: {median}; ours/hand_graph {record['ours_over_hand_graph']:.3f}; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
