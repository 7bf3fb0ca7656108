"""Training throughput of our train.py pipeline against plain PyTorch loops, step by step.

One model (784-400-20 MLP VAE: encoder 784-400-(2x20), decoder 20-400-784, ReLU, Bernoulli
likelihood, analytic KL, L = 1), batch 128, the same data (synthetic MNIST-sized uint8 images
written as IDX files, read by MNISTDataModule: 50000 train after the val split), dynamic
binarization of every training batch on all sides, and the optimizer of the composed config
(Adam lr 1e-3, fused) unless said otherwise:
  (a) hand = a minimal hand-written loop: the split as one float tensor, a permutation per epoch,
      index slicing, our VAE module's maths (loss = -mean of VAE.bound, as its training_step
      computes it), so that (c)/(a) measures the framework alone;
  (b) loader = the same loop fed by DataLoader(TensorDataset(x, y), shuffle=True), as in the
      PyTorch examples;
  (c) ours = Hydra compose of conf/train.yaml with data=mnist + vae_lightning.train.train (the
      Trainer, default callbacks, CSV logger and progress bar: what `python train.py` runs);
  hand_elbo = loop (a) with the ELBO written by hand as in the PyTorch VAE example (plain
      nn.Sequential, BCE-with-logits summed, closed-form Gaussian KL, over the batch size):
      what the torch.distributions maths of VAE.bound costs;
  hand_unfused = loop (a) with torch.optim.Adam(params, lr=1e-3) as the PyTorch examples write
      it (PyTorch's default, unfused, update): what the config's fused optimizer saves.
The sides take turns one training step at a time, so that all of them see the same machine load
(on a shared machine it changes from second to second): (a), (b), hand_elbo and hand_unfused in
one round-robin loop; (c) paired with a copy of (a) that a callback steps after each of (c)'s
steps, on the data module's training split with the module's own optimizer factory. (c)'s step
time is everything between two of those callback calls: Lightning's loop, hooks, logging,
callbacks, data fetching and binarization, the step itself. --warmup steps are untimed, the next
--steps timed. Reported: samples/s of each side and each side's ratio to the (a) it was paired
with, per round and the median over rounds, and the milliseconds per step of (c) and its (a) by
phase (data, forward, backward, optimizer; see StepTimer), which show where the time goes.
Then `python train.py` in a subprocess: seconds from just before the process is spawned to its
first on_train_batch_start (interpreter start, imports, compose, data read, sanity check
included), and the peak RSS of that process by its last stage's end (VmHWM: the forked parent's
pages, which getrusage's children figure would include, do not count).
Usage: python benchmarks/throughput.py [--rounds 3] [--steps 300] [--warmup 50] [--threads N]
       [--startup-runs 3] [--device cuda] [--out FILE] [train.py overrides for (c)...]
--device cuda keeps the data on the GPU for (a) and, via data.on_device=true, for (c); each
step is then timed between two device synchronizations.
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
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from data_throughput import write_fake_mnist
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vae_lightning.data import MNISTDataModule
from vae_lightning.module import VAE
from vae_lightning.train import train

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
from compose import compose_train  # noqa: E402  (the config `python train.py <overrides>` composes)

RESULTS = REPO / "benchmarks" / "results"
BATCH = 128
Optimizer = Callable[..., torch.optim.Optimizer]


def _now(device: torch.device) -> float:
    """perf_counter() once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


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


PHASES = ("data", "forward", "backward", "optimizer")


class HandLoop:
    """A hand-written training loop over ``batches`` (an iterator of [B, 784] float batches in
    [0, 1]) with ``optimizer(parameters)``, run one step at a time: our VAE and its ``bound``, or
    with ``hand_elbo`` the HandVAE. ``seconds`` sums the timed steps' phases: data (fetch and
    binarization), forward (loss and zero_grad), backward, optimizer."""

    def __init__(self, batches: Iterator[torch.Tensor], device: torch.device,
                 optimizer: Optimizer, hand_elbo: bool = False) -> None:
        self.batches, self.device = batches, device
        if hand_elbo:
            model = HandVAE().to(device)
            self.loss_fn = model.loss
        else:
            model = VAE(784).to(device)
            self.loss_fn = partial(our_vae_loss, model)
        self.opt = optimizer(model.parameters())
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def step(self, timed: bool) -> None:
        """One training step; with ``timed``, its phases are added to ``seconds``."""
        laps = [_now(self.device)]
        x = next(self.batches)
        x = (torch.rand_like(x) < x).float()  # dynamic binarization
        laps.append(_now(self.device))
        loss = self.loss_fn(x)
        self.opt.zero_grad(set_to_none=True)
        laps.append(_now(self.device))
        loss.backward()
        laps.append(_now(self.device))
        self.opt.step()
        laps.append(_now(self.device))
        if timed:
            for phase, start, stop in zip(PHASES, laps, laps[1:]):
                self.seconds[phase] += stop - start


def hand_batches(x: torch.Tensor) -> Iterator[torch.Tensor]:
    while True:
        perm = torch.randperm(len(x), device=x.device)
        for idx in perm.split(BATCH):
            yield x[idx]


def loader_batches(loader: DataLoader, device: torch.device) -> Iterator[torch.Tensor]:
    while True:
        for x, _ in loader:
            yield x.to(device, non_blocking=True)


def peak_rss_mib() -> float:
    """This process's peak resident set since it started (Linux: VmHWM, which, unlike
    getrusage, does not count the parent's pages a forked child held before its exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux and BSD


def round_robin(loops: dict[str, HandLoop], warmup: int, steps: int) -> dict[str, float]:
    """Step the loops in turn; samples/s of each over the ``steps`` steps after ``warmup``."""
    for i in range(warmup + steps):
        for loop in loops.values():
            loop.step(timed=i >= warmup)
    return {name: steps * BATCH / sum(loop.seconds.values()) for name, loop in loops.items()}


class StepTimer(L.Callback):
    """Writes to the JSON file ``path`` the wall time (time.time(), comparable across processes)
    of the first training step and which of wandb and matplotlib were imported by then.

    Given ``start < stop``, it also steps a hand loop (a) after each of the run's training
    steps, on the data module's training split with the module's optimizer factory, and writes
    the samples/s of both over the steps from ``start`` to ``stop``, and the seconds per step of
    each phase. The run's phases are laps between hooks: data = from the end of the previous
    step (after the hand step) to ``on_train_batch_start`` (Lightning's loop and the previous
    step's remaining ``on_train_batch_end`` hooks, fetching, binarization); forward = to
    ``on_before_backward`` (the optimizer closure, zero_grad, ``training_step``); backward = to
    ``on_after_backward``; optimizer = to ``on_train_batch_end`` (the update and the hooks
    before this one)."""

    def __init__(self, path: str, start: int = 0, stop: int = 0) -> None:
        self.path, self.start, self.stop = Path(path), start, stop
        self.record: dict[str, Any] = {}
        self.hand: HandLoop | None = None
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.mark = 0.0

    def _lap(self, trainer, pl_module, phase: str, step: int) -> None:
        """End ``phase`` of training step ``step`` (0-based)."""
        if self.hand is None:
            return
        now = _now(pl_module.device)
        if self.start <= step < self.stop:
            self.seconds[phase] += now - self.mark
        self.mark = now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and "first_step_time" not in self.record:
            self.record["first_step_time"] = time.time()
            self.record["imported"] = [m for m in ("wandb", "matplotlib") if m in sys.modules]
            self.path.write_text(json.dumps(self.record))
            if self.start < self.stop:
                dm, device = trainer.datamodule, pl_module.device
                x = dm.splits["train"][0].flatten(1).to(device).float() / dm.scale
                self.hand = HandLoop(hand_batches(x), device, pl_module.optimizer_factory)
                self.mark = _now(device)
        self._lap(trainer, pl_module, "data", trainer.global_step)

    def teardown(self, trainer, pl_module, stage: str) -> None:  # after fit, and after test
        self.record["peak_rss_mib"] = peak_rss_mib()
        self.path.write_text(json.dumps(self.record))

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._lap(trainer, pl_module, "forward", trainer.global_step)

    def on_after_backward(self, trainer, pl_module) -> None:
        self._lap(trainer, pl_module, "backward", trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # global_step counts this step already
        self._lap(trainer, pl_module, "optimizer", step)
        if self.hand is None:
            return
        self.hand.step(timed=self.start <= step < self.stop)
        if step == self.stop - 1:
            n = (self.stop - self.start) * BATCH
            self.record["samples_per_s"] = {
                side: n / sum(seconds.values())
                for side, seconds in (("ours", self.seconds), ("hand", self.hand.seconds))}
            self.record["ms_per_step"] = {
                side: {phase: 1e3 * t / (self.stop - self.start) for phase, t in seconds.items()}
                for side, seconds in (("ours", self.seconds), ("hand", self.hand.seconds))}
            self.path.write_text(json.dumps(self.record))
        self.mark = _now(pl_module.device)


def ours(common: list[str], output_dir: Path, warmup: int, steps: int) -> dict[str, Any]:
    """Samples/s of (c) and of the hand loop (a) paired with it step by step, and their
    milliseconds per step by phase."""
    output_dir.mkdir(parents=True)
    record = output_dir / "timer.json"
    overrides = [*common, f"++trainer.max_steps={warmup + steps + 1}", *timer(record),
                 f"+callbacks.timer.start={warmup}", f"+callbacks.timer.stop={warmup + steps}"]
    train(compose_train(overrides, output_dir))
    return json.loads(record.read_text())


def timer(path: Path) -> list[str]:
    """Overrides adding a StepTimer (this file is importable as ``throughput``)."""
    return ["+callbacks.timer._target_=throughput.StepTimer", f"+callbacks.timer.path={path}"]


def first_step(common: list[str], run_dir: Path) -> dict[str, Any]:
    """Run `python train.py` for a few steps in ``run_dir``: seconds from spawning it to its
    first training step, what it had imported by then, and its peak RSS."""
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
        "peak_rss_mib": first["peak_rss_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps before them")
    parser.add_argument("--startup-runs", type=int, default=3, help="train.py subprocess runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="results file (default: "
                        "benchmarks/results/throughput-{cpu,gpu}.json)")
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
        # The optimizer (c) trains with, for the loops too: like for like.
        optimizer = instantiate(compose_train(common, tmp).optimizer)
        unfused = partial(torch.optim.Adam, lr=1e-3)

        rates: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        phases: dict[str, dict[str, list[float]]] = {}  # ms per step: side -> phase -> rounds
        for r in range(args.rounds):
            loops = {
                "hand": HandLoop(hand_batches(x_device), device, optimizer),
                "loader": HandLoop(loader_batches(loader, device), device, optimizer),
                "hand_elbo": HandLoop(hand_batches(x_device), device, optimizer, hand_elbo=True),
                "hand_unfused": HandLoop(hand_batches(x_device), device, unfused),
            }
            measured = round_robin(loops, args.warmup, args.steps)
            run = ours(common, tmp / f"run{r}", args.warmup, args.steps)
            paired = run["samples_per_s"]
            measured |= {"ours": paired["ours"], "hand_paired_with_ours": paired["hand"]}
            for side, ms in run["ms_per_step"].items():
                for phase, value in ms.items():
                    phases.setdefault(side, {}).setdefault(phase, []).append(value)
            for name, value in measured.items():
                rates.setdefault(name, []).append(value)
            for name in ("loader", "hand_elbo", "hand_unfused"):
                ratios.setdefault(f"{name}/hand", []).append(measured[name] / measured["hand"])
            ratios.setdefault("ours/hand", []).append(paired["ours"] / paired["hand"])
            print(f"round {r}: " + ", ".join(f"{k} {v:.0f}" for k, v in measured.items())
                  + " samples/s; " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ratios.items()),
                  flush=True)
        startup = [first_step(common, tmp / f"startup{i}") for i in range(args.startup_runs)]

    median = {k: statistics.median(v) for k, v in rates.items()}
    median_ratios = {k: statistics.median(v) for k, v in ratios.items()}
    median_phases = {side: {phase: statistics.median(v) for phase, v in by_phase.items()}
                     for side, by_phase in phases.items()}
    to_first = statistics.median(s["seconds_to_first_step"] for s in startup)
    peak_rss = max(s["peak_rss_mib"] for s in startup)
    print(
        "median samples/s: " + ", ".join(f"{k} {v:.0f}" for k, v in median.items()) + "; "
        + ", ".join(f"{k} {v:.3f}" for k, v in median_ratios.items()) + "\n"
        f"train.py: {to_first:.2f} s to the first step (median of {len(startup)}), "
        f"peak RSS {peak_rss:.0f} MiB, imported by the first step: "
        f"{', '.join(startup[0]['imported_at_first_step']) or 'neither wandb nor matplotlib'}"
    )
    for side, ms in median_phases.items():
        print(f"{side} ms/step: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
              + f", total {sum(ms.values()):.3f}")
    path = args.out or RESULTS / f"throughput-{'gpu' if gpu else 'cpu'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "what": "training samples/s, 784-400-20 MLP VAE, batch 128, Bernoulli, Adam, MNIST-sized; "
                "sides stepped in turn, (c) paired with its own copy of (a)",
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
        "ratios": ratios,
        "median_samples_per_s": median,
        "median_of_round_ratios": median_ratios,
        "ms_per_step_by_phase": phases,
        "median_ms_per_step_by_phase": median_phases,
        "startup": startup,
        "median_seconds_to_first_step": to_first,
        "peak_rss_mib": peak_rss,
    }, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
