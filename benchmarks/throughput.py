"""Training throughput of our train.py pipeline against plain PyTorch loops, interleaved.

One model (784-400-20 MLP VAE: encoder 784-400-(2x20), decoder 20-400-784, ReLU, Bernoulli
likelihood, Adam lr 1e-3, analytic KL, L = 1), batch 128, the same data (synthetic MNIST-sized
uint8 images written as IDX files, read by MNISTDataModule: 50000 train after the val split),
dynamic binarization of every training batch on all sides:
  (a) hand = a minimal hand-written loop: the split as one float tensor, a permutation per epoch,
      index slicing, Adam on our VAE module's maths (loss = -mean of VAE.bound, as its
      training_step computes it), so that (c)/(a) measures the framework alone;
  (b) loader = the same loop fed by DataLoader(TensorDataset(x, y), shuffle=True), as in the
      PyTorch examples;
  (c) ours = Hydra compose of conf/train.yaml with data=mnist + vae_lightning.train.train (the
      Trainer, default callbacks, CSV logger and progress bar: what `python train.py` runs),
      steps timed by a callback between step --warmup and step --warmup + --steps, inside the
      first epoch: no sanity check, validation, checkpointing or start-up in the window;
  hand_elbo = loop (a) with the ELBO written by hand as in the PyTorch VAE example (plain
      nn.Sequential, BCE-with-logits summed, closed-form Gaussian KL, over the batch size):
      what the torch.distributions maths of VAE.bound costs.
Rounds interleave a, b, c, hand_elbo; reported: median samples/s of each, and the median over
rounds of each round's ratio to (a).
Then `python train.py` in a subprocess: seconds from just before the process is spawned to its
first on_train_batch_start (interpreter start, imports, compose, data read, sanity check
included), and the peak RSS of that process (getrusage RUSAGE_CHILDREN).
Usage: python benchmarks/throughput.py [--rounds 5] [--steps 300] [--warmup 50] [--threads N]
       [--startup-runs 3] [--device cuda] [train.py overrides for (c)...]
--device cuda keeps the data on the GPU for (a) and, via data.on_device=true, for (c).
Writes benchmarks/results/throughput-{cpu,gpu}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from data_throughput import write_fake_mnist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vae_lightning.data import MNISTDataModule
from vae_lightning.module import VAE
from vae_lightning.train import train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BATCH = 128


class StepTimer(L.Callback):
    """Writes to the JSON file ``path`` the wall time (time.time(), comparable across processes)
    of the first training step, which of wandb and matplotlib were imported by then, and, given
    ``start < stop``, the samples/s of the steps between them (perf_counter, after a device sync
    on GPU)."""

    def __init__(self, path: str, start: int = 0, stop: int = 0) -> None:
        self.path, self.start, self.stop = Path(path), start, stop
        self.record: dict[str, float] = {}
        self.started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 and "first_step_time" not in self.record:
            self.record["first_step_time"] = time.time()
            self.record["imported"] = [m for m in ("wandb", "matplotlib") if m in sys.modules]
            self.path.write_text(json.dumps(self.record))
        if self.start < self.stop and step in (self.start, self.stop):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            if step == self.start:
                self.started = time.perf_counter()
            else:
                elapsed = time.perf_counter() - self.started
                self.record["samples_per_s"] = (self.stop - self.start) * BATCH / elapsed
                self.path.write_text(json.dumps(self.record))


class HandVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
        self.decoder = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The negative ELBO averaged over the batch (analytic KL, one sample)."""
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        recon = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
        return (recon + kl) / x.shape[0]


def our_vae_loss(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """The loss VAE.training_step minimises (beta = 1): the negative ELBO from VAE.bound."""
    bound = model.bound(x)
    return -(bound.recon - bound.kl).mean()


def timed_loop(batches, device: torch.device, warmup: int, steps: int, hand_elbo: bool) -> float:
    """Train a fresh model on ``batches`` (an iterable of [B, 784] float batches in [0, 1]) and
    return samples/s over the ``steps`` steps after ``warmup``: our VAE and its ``bound``, or
    with ``hand_elbo`` the HandVAE."""
    if hand_elbo:
        model = HandVAE().to(device)
        loss_fn = model.loss
    else:
        model = VAE(784).to(device)
        loss_fn = partial(our_vae_loss, model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = None
    for step, x in enumerate(batches):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if step == warmup + steps:
            break
        x = (torch.rand_like(x) < x).float()  # dynamic binarization
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * BATCH / (time.perf_counter() - start)


def hand_batches(x: torch.Tensor):
    while True:
        perm = torch.randperm(len(x), device=x.device)
        for idx in perm.split(BATCH):
            yield x[idx]


def loader_batches(loader: DataLoader, device: torch.device):
    while True:
        for x, _ in loader:
            yield x.to(device, non_blocking=True)


def ours(common: list[str], output_dir: Path, warmup: int, steps: int) -> float:
    sys.path.append(str(REPO / "tests"))
    from compose import compose_train  # the config `python train.py <overrides>` composes

    output_dir.mkdir(parents=True)
    record = output_dir / "timer.json"
    overrides = [*common, f"++trainer.max_steps={warmup + steps + 1}", *timer(record),
                 f"+callbacks.timer.start={warmup}", f"+callbacks.timer.stop={warmup + steps}"]
    train(compose_train(overrides, output_dir))
    return json.loads(record.read_text())["samples_per_s"]


def timer(path: Path) -> list[str]:
    """Overrides adding a StepTimer (this file is importable as ``throughput``)."""
    return ["+callbacks.timer._target_=throughput.StepTimer", f"+callbacks.timer.path={path}"]


def first_step(common: list[str], run_dir: Path) -> dict[str, Any]:
    """Run `python train.py` for a few steps in ``run_dir``: seconds from spawning it to its
    first training step, what it had imported by then, and the peak RSS of the processes
    run so far (this one included)."""
    record = run_dir / "first_step.json"
    run_dir.mkdir(parents=True)
    paths = [str(REPO / "benchmarks"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, str(REPO / "train.py"), *common, "++trainer.max_steps=5",
           f"hydra.run.dir={run_dir}", *timer(record)]
    start = time.time()
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    first = json.loads(record.read_text())
    return {
        "seconds_to_first_step": first["first_step_time"] - start,
        "imported_at_first_step": first["imported"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps before them")
    parser.add_argument("--startup-runs", type=int, default=3, help="train.py subprocess runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for (c)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup + args.steps >= 50000 // BATCH:
        parser.error("--warmup + --steps must stay inside the first epoch (390 steps)")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    load = os.getloadavg()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_fake_mnist(tmp)
        common = [
            "data=mnist", f"data.root={tmp}", "data.download=false", f"data.batch_size={BATCH}",
            *(["trainer.accelerator=gpu", "data.on_device=true"] if gpu else
              ["trainer.accelerator=cpu"]),
            # Fig. 2's log-spaced evaluations (1e4, 1.6e4, ... samples) are evaluation, like
            # the validation the first epoch never reaches: not part of the training step.
            "~callbacks.bound_curve",
            *args.overrides,
        ]
        dm = MNISTDataModule(root=tmp, download=False)
        dm.setup("fit")
        x_train = dm.splits["train"][0].flatten(1).float() / 255
        y_train = dm.splits["train"][1]
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=BATCH, shuffle=True)
        x_device = x_train.to(device)

        rates: dict[str, list[float]] = {"hand": [], "loader": [], "ours": [], "hand_elbo": []}
        for r in range(args.rounds):
            rates["hand"].append(
                timed_loop(hand_batches(x_device), device, args.warmup, args.steps, False))
            rates["loader"].append(
                timed_loop(loader_batches(loader, device), device, args.warmup, args.steps, False))
            rates["ours"].append(ours(common, tmp / f"run{r}", args.warmup, args.steps))
            rates["hand_elbo"].append(
                timed_loop(hand_batches(x_device), device, args.warmup, args.steps, True))
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
                  + " samples/s", flush=True)
        startup = [first_step(common, tmp / f"startup{i}") for i in range(args.startup_runs)]

    median = {k: statistics.median(v) for k, v in rates.items()}
    # Each round's ratio is taken between neighbouring measurements, so that a change of the
    # machine's load between rounds cancels out; then the median over rounds.
    ratios = {
        f"{k}/hand": statistics.median(v / h for v, h in zip(rates[k], rates["hand"]))
        for k in ("ours", "loader", "hand_elbo")
    }
    to_first = statistics.median(s["seconds_to_first_step"] for s in startup)
    peak_rss = max(s["peak_rss_mib"] for s in startup)
    print(
        "median samples/s: " + ", ".join(f"{k} {v:.0f}" for k, v in median.items()) + "; "
        + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()) + "\n"
        f"train.py: {to_first:.2f} s to the first step (median of {len(startup)}), "
        f"peak RSS {peak_rss:.0f} MiB, imported by the first step: "
        f"{', '.join(startup[0]['imported_at_first_step']) or 'neither wandb nor matplotlib'}"
    )
    path = RESULTS / f"throughput-{'gpu' if gpu else 'cpu'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "what": "training samples/s, 784-400-20 MLP VAE, batch 128, Bernoulli, Adam, MNIST-sized",
        "device": torch.cuda.get_device_name() if gpu else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "load_average_at_start": load,
        "load_average_at_end": os.getloadavg(),
        "rounds": args.rounds,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "samples_per_s": rates,
        "median_samples_per_s": median,
        "median_of_round_ratios": ratios,
        "startup": startup,
        "median_seconds_to_first_step": to_first,
        "peak_rss_mib": peak_rss,
    }, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
