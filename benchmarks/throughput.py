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
  (c_K) ours_kK = (c) with data.steps_per_batch=K (--steps-per-batch, default 8): each
      Lightning batch is K minibatches of 128 and takes K optimizer steps in one training_step,
      so that Lightning's per-batch cost is paid once every K steps;
  (d) lightning = hand_elbo's model and maths in the plain LightningModule a Lightning user
      writes (training_step returns the loss; batches as (a) slices them, binarized in the step;
      the Trainer with no logger, checkpoint, progress bar or model summary), paired like (c):
      Lightning's own per-step cost, the floor of any framework built on its automatic loop;
  hand_elbo = loop (a) with the ELBO written by hand as in the PyTorch VAE example (plain
      nn.Sequential, BCE-with-logits summed, closed-form Gaussian KL, over the batch size):
      what the torch.distributions maths of VAE.bound costs;
  hand_unfused = loop (a) with torch.optim.Adam(params, lr=1e-3) as the PyTorch examples write
      it (PyTorch's default, unfused, update): what the config's fused optimizer saves.
The sides take turns one training step at a time, so that all of them see the same machine load
(on a shared machine it changes from second to second): (a), (b), hand_elbo and hand_unfused in
one round-robin loop; (c) paired with a copy of (a) and a copy of hand_elbo (the loop a user
writes), which a callback steps after each of (c)'s steps, on the data module's training split
with the module's own optimizer factory, so that (c)/(a) and (c)/hand_elbo are each measured
under the load of their moment; (c_K) likewise with its own copies, which the callback steps K
times after each of (c_K)'s batches (as many times as the batch took optimizer steps). (c)'s step
time is everything between two of those callback calls: Lightning's loop, hooks, logging,
callbacks, data fetching and binarization, the step itself; (c_K)'s batch time likewise, for K
steps. --warmup steps are untimed, the next --steps timed (optimizer steps; for (c_K) each rounded
up to a multiple of K, so that whole batches are timed). Reported: samples/s of each side and the
ratios of (c) and (c_K) to the (a) and the hand_elbo they were paired with, per round and the median
over rounds, and the milliseconds per step of (c), (c_K) and their paired loops by phase, which show
where the time goes: (c) by data, forward, backward, optimizer; (c_K) by data and steps only (the K
steps and the batch's hooks: no hook follows an update inside a batch, so forward, backward and
optimizer cannot be told apart); see StepTimer. Each round also times a 2048^3 float32 matrix
product, the machine's matrix-product peak under the load of that moment; each side's fraction of it
is its samples/s times the model's training FLOPs per sample (training_flops_per_sample) over the
product's FLOP/s.
Then `python train.py` in a subprocess: seconds from just before the process is spawned to its
first on_train_batch_start (interpreter start, imports, compose, data read, sanity check
included), and the peak RSS of that process by its last stage's end (VmHWM: the forked parent's
pages, which getrusage's children figure would include, do not count).
Usage: python benchmarks/throughput.py [--rounds 3] [--steps 300] [--warmup 50] [--threads N]
       [--steps-per-batch 8] [--startup-runs 3] [--device cuda] [--out FILE]
       [train.py overrides for (c) and (c_K)...]
--steps-per-batch 1 (or less) leaves (c_K) out. --device cuda keeps the data on the GPU for (a)
and, via data.on_device=true, for (c) and (c_K); each step (each batch of (c_K)) is then timed
between two device synchronizations.
Writes benchmarks/results/throughput-{cpu,gpu}.json.
"""

from __future__ import annotations

import argparse
import json
import math
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
from models import small_vae  # noqa: E402  (the default model's parts, composed in Python)

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
    """The loss VAE.training_step minimises (its ELBO objective's) on images [B, 1, 28, 28]."""
    return model.objective.loss(model, x.view(-1, 1, 28, 28))[0]


PHASES = ("data", "forward", "backward", "optimizer")
HAND_SIDES = ("hand", "hand_elbo")  # the loops each of our runs is paired with


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
            model = small_vae((1, 28, 28), latent=20, hidden=(400,)).to(device)
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


def training_flops_per_sample() -> float:
    """Multiply-adds (x2) of one training sample's forward and backward passes through the
    model's affine layers: 2 m n forward per m x n layer, as much again for its weight gradient,
    and as much again for its input gradient except at the encoder's first layer (its input is
    the data). The elementwise work (activations, likelihood, KL, Adam) is left out."""
    model = small_vae((1, 28, 28), latent=20, hidden=(400,))
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    forward = sum(2 * m.in_features * m.out_features for m in layers)
    first = model.encoder.net[0]
    return 3 * forward - 2 * first.in_features * first.out_features


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` float32 n x n x n matrix products on ``device``:
    the machine's matrix-product peak, as this process sees it under the current load."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = _now(device)
        a @ b
        best = min(best, _now(device) - start)
    return 2 * n**3 / best


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

    Given ``start < stop`` (optimizer steps, as ``global_step`` counts them), it also steps the hand
    loops (a) and hand_elbo (``HAND_SIDES``) after each of the run's training batches, as many times
    as the batch took optimizer steps (the change of ``global_step``: 1, or up to K with
    ``data.steps_per_batch`` K), on the data module's training split with the module's optimizer
    factory, and writes the samples/s of the run and of each loop over the batches whose steps all
    lie from ``start`` to ``stop`` (whole batches: give multiples of K), the number of those steps,
    and the seconds per step of each phase. The run's phases are laps between hooks: data = from the
    end of the previous batch (after the hand steps) to ``on_train_batch_start`` (Lightning's loop
    and the previous batch's remaining ``on_train_batch_end`` hooks, fetching, binarization). With
    one step per batch (automatic optimization), forward = to ``on_before_backward`` (the optimizer
    closure, zero_grad, ``training_step``); backward = to ``on_after_backward``; optimizer = to
    ``on_train_batch_end`` (the update and the hooks before this one). With K steps per batch
    (manual optimization) the backward hooks fire K times a batch and no hook follows an update,
    so the rest is one phase: steps = to ``on_train_batch_end`` (the K steps and the hooks)."""

    def __init__(self, path: str, start: int = 0, stop: int = 0,
                 x: torch.Tensor | None = None) -> None:
        self.path, self.start, self.stop = Path(path), start, stop
        self.x = x  # the hand loops' [N, 784] training data (default: the data module's split)
        self.record: dict[str, Any] = {}
        self.hands: dict[str, HandLoop] = {}  # "hand" (a) and "hand_elbo", stepped in turn
        self.seconds: dict[str, float] = {}  # the timed batches' phases
        self.laps: dict[str, float] = {}  # this batch's phases
        self.mark = 0.0
        self.first = 0  # global_step at this batch's start: its steps are first, first + 1, ...
        self.steps = 0  # timed optimizer steps

    def _lap(self, pl_module, phase: str) -> None:
        """End ``phase`` of this batch."""
        if not self.hands:
            return
        now = _now(pl_module.device)
        self.laps[phase] = now - self.mark
        self.mark = now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and "first_step_time" not in self.record:
            self.record["first_step_time"] = time.time()
            self.record["imported"] = [m for m in ("wandb", "matplotlib") if m in sys.modules]
            self.path.write_text(json.dumps(self.record))
            if self.start < self.stop:
                dm, device = trainer.datamodule, pl_module.device
                x = (self.x if self.x is not None else
                     dm.splits["train"][0].flatten(1).to(device).float() / dm.scale)
                self.hands = {name: HandLoop(hand_batches(x), device, pl_module.optimizer,
                                             hand_elbo=name == "hand_elbo")
                              for name in HAND_SIDES}
                phases = PHASES if pl_module.automatic_optimization else ("data", "steps")
                self.seconds = dict.fromkeys(phases, 0.0)
                self.mark = _now(device)
        self.first = trainer.global_step
        self._lap(pl_module, "data")

    def teardown(self, trainer, pl_module, stage: str) -> None:  # after fit, and after test
        self.record["peak_rss_mib"] = peak_rss_mib()
        self.path.write_text(json.dumps(self.record))

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if pl_module.automatic_optimization:
            self._lap(pl_module, "forward")

    def on_after_backward(self, trainer, pl_module) -> None:
        if pl_module.automatic_optimization:
            self._lap(pl_module, "backward")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._lap(pl_module, "optimizer" if pl_module.automatic_optimization else "steps")
        if not self.hands:
            return
        end = trainer.global_step  # the batch's steps: self.first to end - 1
        timed = self.start <= self.first and end <= self.stop
        for _ in range(end - self.first):
            for hand in self.hands.values():
                hand.step(timed)
        if timed:
            self.steps += end - self.first
            for phase, seconds in self.laps.items():
                self.seconds[phase] += seconds
        self.laps = {}
        if self.first < self.stop <= end and self.steps:  # the window's last batch
            sides = (("ours", self.seconds),
                     *((name, hand.seconds) for name, hand in self.hands.items()))
            self.record["timed_steps"] = self.steps
            self.record["samples_per_s"] = {
                side: self.steps * BATCH / sum(seconds.values()) for side, seconds in sides}
            self.record["ms_per_step"] = {
                side: {phase: 1e3 * t / self.steps for phase, t in seconds.items()}
                for side, seconds in sides}
            self.path.write_text(json.dumps(self.record))
        self.mark = _now(pl_module.device)


def ours(common: list[str], output_dir: Path, warmup: int, steps: int,
         steps_per_batch: int = 1) -> dict[str, Any]:
    """Samples/s of (c) with ``data.steps_per_batch`` and of the hand loops (a) and hand_elbo
    paired with it batch by batch, and their milliseconds per step by phase (see StepTimer)."""
    output_dir.mkdir(parents=True)
    record = output_dir / "timer.json"
    overrides = [*common, f"data.steps_per_batch={steps_per_batch}",
                 f"++trainer.max_steps={warmup + steps + 1}", *timer(record),
                 f"+callbacks.timer.start={warmup}", f"+callbacks.timer.stop={warmup + steps}"]
    train(compose_train(overrides, output_dir))
    return json.loads(record.read_text())


class BareLightning(L.LightningModule):
    """(d): hand_elbo's model and loss in a plain LightningModule, with the same optimizer."""

    def __init__(self, optimizer: Optimizer) -> None:
        super().__init__()
        self.model, self.optimizer = HandVAE(), optimizer

    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model.loss((torch.rand_like(x) < x).float())  # dynamic binarization

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())


def bare_lightning(x: torch.Tensor, optimizer: Optimizer, output_dir: Path, warmup: int,
                   steps: int) -> dict[str, Any]:
    """Samples/s of (d) and of the hand loops paired with it step by step (see StepTimer)."""
    output_dir.mkdir(parents=True)
    record = output_dir / "timer.json"
    trainer = L.Trainer(
        accelerator="gpu" if x.is_cuda else "cpu", devices=1, max_steps=warmup + steps + 1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=output_dir,
        callbacks=[StepTimer(str(record), warmup, warmup + steps, x=x)])
    trainer.fit(BareLightning(optimizer), train_dataloaders=hand_batches(x))
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
    parser.add_argument("--steps-per-batch", type=int, default=8, help="K of (c_K): optimizer "
                        "steps per Lightning batch (1 or less: no (c_K))")
    parser.add_argument("--startup-runs", type=int, default=3, help="train.py subprocess runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="results file (default: "
                        "benchmarks/results/throughput-{cpu,gpu}.json)")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for (c), (c_K)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup + args.steps >= 50000 // BATCH:
        parser.error("--warmup + --steps must stay inside the first epoch (390 steps)")
    k = max(args.steps_per_batch, 1)
    window_k = [-(-n // k) * k for n in (args.warmup, args.steps)]  # whole batches of K steps
    if k > 1 and sum(window_k) >= 50000 // BATCH:
        parser.error(f"--warmup + --steps, rounded up to multiples of --steps-per-batch {k} "
                     f"({' + '.join(map(str, window_k))}), must stay inside the first epoch")
    side_k = f"ours_k{k}"
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
        optimizer = instantiate(compose_train(common, tmp).model.optimizer)
        unfused = partial(torch.optim.Adam, lr=1e-3)

        rates: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        peak: list[float] = []  # FLOP/s of a 2048^3 matrix product, once per round
        phases: dict[str, dict[str, list[float]]] = {}  # ms per step: side -> phase -> rounds
        for r in range(args.rounds):
            loops = {
                "hand": HandLoop(hand_batches(x_device), device, optimizer),
                "loader": HandLoop(loader_batches(loader, device), device, optimizer),
                "hand_elbo": HandLoop(hand_batches(x_device), device, optimizer, hand_elbo=True),
                "hand_unfused": HandLoop(hand_batches(x_device), device, unfused),
            }
            measured = round_robin(loops, args.warmup, args.steps)
            for name in ("loader", "hand_elbo", "hand_unfused"):
                ratios.setdefault(f"{name}/hand", []).append(measured[name] / measured["hand"])
            runs = {"ours": ours(common, tmp / f"run{r}", args.warmup, args.steps),
                    "lightning": bare_lightning(x_device, optimizer, tmp / f"bare{r}",
                                                args.warmup, args.steps)}
            if k > 1:
                runs[side_k] = ours(common, tmp / f"run{r}_k{k}", *window_k, k)
            for side, run in runs.items():
                paired = run["samples_per_s"]
                measured[side] = paired["ours"]
                names = {"ours": side}
                for hand in HAND_SIDES:
                    names[hand] = f"{hand}_paired_with_{side}"
                    measured[names[hand]] = paired[hand]
                    ratios.setdefault(f"{side}/{hand}", []).append(paired["ours"] / paired[hand])
                for who, ms in run["ms_per_step"].items():
                    for phase, value in ms.items():
                        phases.setdefault(names[who], {}).setdefault(phase, []).append(value)
            peak.append(matmul_peak(device))
            for name, value in measured.items():
                rates.setdefault(name, []).append(value)
            print(f"round {r}: " + ", ".join(f"{k} {v:.0f}" for k, v in measured.items())
                  + " samples/s; " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ratios.items()),
                  flush=True)
        startup = [first_step(common, tmp / f"startup{i}") for i in range(args.startup_runs)]

    median = {k: statistics.median(v) for k, v in rates.items()}
    median_ratios = {k: statistics.median(v) for k, v in ratios.items()}
    median_phases = {side: {phase: statistics.median(v) for phase, v in by_phase.items()}
                     for side, by_phase in phases.items()}
    flops = training_flops_per_sample()
    median_peak = statistics.median(peak)
    of_peak = {side: rate * flops / median_peak for side, rate in median.items()}
    # --startup-runs 0 leaves the start-up figures out (None in the file).
    to_first = (statistics.median(s["seconds_to_first_step"] for s in startup) if startup
                else None)
    peak_rss = max(s["peak_rss_mib"] for s in startup) if startup else None
    print("median samples/s: " + ", ".join(f"{k} {v:.0f}" for k, v in median.items()) + "; "
          + ", ".join(f"{k} {v:.3f}" for k, v in median_ratios.items()))
    if startup:
        print(f"train.py: {to_first:.2f} s to the first step (median of {len(startup)}), "
              f"peak RSS {peak_rss:.0f} MiB, imported by the first step: "
              + (", ".join(startup[0]["imported_at_first_step"])
                 or "neither wandb nor matplotlib"))
    print(f"{flops / 1e6:.2f} MFLOP per training sample; 2048^3 product "
          f"{median_peak / 1e9:.1f} GFLOP/s; fraction of it: "
          + ", ".join(f"{k} {v:.3f}" for k, v in of_peak.items()))
    for side, ms in median_phases.items():
        print(f"{side} ms/step: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
              + f", total {sum(ms.values()):.3f}")
    path = args.out or RESULTS / f"throughput-{'gpu' if gpu else 'cpu'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "what": "training samples/s, 784-400-20 MLP VAE, batch 128, Bernoulli, Adam, MNIST-sized; "
                "sides stepped in turn, (c), (c_K) (data.steps_per_batch=K) and (d) (a bare "
                "LightningModule with hand_elbo's maths) each paired with its own copies of (a) "
                "and hand_elbo; (c_K)'s phases: data and steps (the K steps) only",
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
        "steps_per_batch": k if k > 1 else None,
        "steps_per_batch_window": dict(zip(("warmup_steps", "timed_steps"), window_k))
        if k > 1 else None,
        "samples_per_s": rates,
        "ratios": ratios,
        "median_samples_per_s": median,
        "median_of_round_ratios": median_ratios,
        "ms_per_step_by_phase": phases,
        "median_ms_per_step_by_phase": median_phases,
        "training_flops_per_sample": flops,
        "matmul_2048_flop_per_s": peak,
        "median_fraction_of_matmul_peak": of_peak,
        "startup": startup,
        "median_seconds_to_first_step": to_first,
        "peak_rss_mib": peak_rss,
    }, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
