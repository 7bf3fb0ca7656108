"""The importance-weighted log-likelihood evaluation (vae-eval) against a hand-written estimator.

One model, the paper's MNIST model (experiment=aevb_mnist: 784-500-20 tanh MLPs, Gaussian
q(z|x), N(0, I) prior, Bernoulli decoder), trained for --train-steps minibatches of 100 with
its own objective and optimizer (an untrained one has q(z|x) = p(z) and would not tell
log q from log p), and the same data on both sides: the first --n test images (the real MNIST
under --root, else synthetic MNIST-sized IDX files), binarized once by the data module's fixed
test draw. Both sides estimate log p(x) ~ log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x),
with --k samples per point scored --chunk at a time, --batch points at a time:
  ours = vae_lightning.log_likelihood.evaluate(model, [x], k, chunk) per batch, what `vae-eval` runs
      (objectives.importance_weighted under no_grad: one rsample() per z_i, stacked, the ELBO's
      running sum beside the running logsumexp, and the encoder's means for the active units);
  hand = a hand-written batched estimator under torch.inference_mode: q = model.encoder(x),
      p = model.prior.distribution(), per chunk z = q.rsample((c,)) ([c, B, Nz] in one draw),
      log w = model.decoder(z).log_prob(x) + p.log_prob(z) - q.log_prob(z), a running
      logsumexp over the chunks, minus log k.
Checks, before anything is timed: with the same draws (hand drawing z one rsample() at a time,
same seed) both give the same per-point estimates to float precision; after the timed rounds,
the mean of the paired per-batch differences ours - hand (same points, independent draws: pure
Monte-Carlo error) is within 4 of its standard errors plus --eps nats of 0.
Timing: the sides take turns batch by batch (the first one rotating), --rounds times over
the --n points after one untimed batch each; seconds per round and points/s, the median over
rounds of each and of the per-round ratio ours / hand. Both sides score the same chunk of
samples per decoder pass: --chunk, or by default vae-eval's own choice (objectives.auto_chunk,
sized to the cache on a CPU); --fixed-chunk C adds a third side, ours at chunk C, to show what
the choice is worth.
FLOP rate: the decoder's matrix products, 2 FLOP per weight of its Linear layers per sample
(the encoder, once per point, and the elementwise work are not counted), per second; beside it,
each round, the same count for the decoder network alone on the first batch's k samples (no
likelihood, sampling or logsumexp: the FLOP-bound reference for these shapes) and a 2048^3
matrix product (the machine's rate); on the CPU, ours' time by operator on one batch
(torch.profiler). Peak memory: on CUDA the peak of
torch.cuda.max_memory_allocated over a batch (reset before it) minus what was allocated before
it; on the CPU each side runs on the first batch once per round in a fresh subprocess, after
a tiny untimed run of the same side (k = chunk = 2) that loads the code paths: the resident
set's high-water mark (VmHWM) at the end minus the resident set (VmRSS) at the moment the mark
was reset (/proc/self/clear_refs) after setup; where that reset is unavailable,
getrusage's ru_maxrss at the end minus VmRSS (or ru_maxrss) after setup (the JSON says which).
Usage: python benchmarks/eval_speed.py [--rounds 3] [--n 500] [--k 1000] [--chunk C]
       [--fixed-chunk C] [--batch 100] [--train-steps 100] [--root DIR] [--device cuda]
       [--threads N] [--eps 0.01] [--out FILE]
(vae-eval's defaults are k = 5000, batch 100: pass --k 5000 --n 10000 for its full figures.)
Writes benchmarks/results/eval-speed.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))
sys.path.append(str(REPO / "benchmarks"))
from compose import compose_train  # noqa: E402  (the config `python train.py <overrides>` composes)
from data_throughput import write_fake_mnist  # noqa: E402

from vae_lightning.log_likelihood import evaluate  # noqa: E402
from vae_lightning.module import VAE  # noqa: E402
from vae_lightning.objectives import auto_chunk, importance_weighted  # noqa: E402
from vae_lightning.train import build_run  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SIDES = ["ours", "hand"]  # and "ours_fixed" with --fixed-chunk
Draw = Callable[[Distribution, int], Tensor]


def one_draw(q: Distribution, n: int) -> Tensor:
    """n samples of q, [n, B, Nz], in one rsample: the hand estimator's draw."""
    return q.rsample((n,))


def sample_by_sample(q: Distribution, n: int) -> Tensor:
    """n samples of q drawn one rsample() at a time, as importance_weighted draws them."""
    return torch.stack([q.rsample() for _ in range(n)])


def hand_log_likelihood(model: VAE, x: Tensor, k: int, chunk: int,
                        draw: Draw = one_draw) -> Tensor:
    """log p(x) per point of ``x`` by importance sampling with k samples of q(z|x), ``chunk``
    at a time, combined with a running logsumexp."""
    with torch.inference_mode():
        q = model.encoder(x)
        p = model.prior.distribution()
        lse = torch.full((x.shape[0],), -math.inf, device=x.device)
        for start in range(0, k, chunk):
            z = draw(q, min(chunk, k - start))  # [c, B, Nz]
            log_w = model.decoder(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)  # [c, B]
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
        return lse - math.log(k)


def run_side(side: str, model: VAE, x: Tensor, k: int, chunk: int | None,
             fixed_chunk: int | None = None) -> float:
    """One side on the batch ``x``: the mean of its per-point log p(x) estimates (nats). ``chunk``
    None: ours chooses its own (``auto_chunk``), and the hand estimator is given the same number."""
    if side == "ours":
        return evaluate(model, [x], k, chunk)["iw"].nats
    if side == "ours_fixed":
        return evaluate(model, [x], k, fixed_chunk)["iw"].nats
    return hand_log_likelihood(model, x, k, chunk or auto_chunk(x, k)).double().mean().item()


def decoder_flops(model: VAE) -> int:
    """Floating-point operations of one decoder pass per sample: 2 per weight of its Linear
    layers (a multiply and an add), the matrix products that dominate; biases, activations and
    the log-likelihood are not counted. The benchmark's model is an MLP: every weight of its
    decoder network is in a Linear layer."""
    net = model.decoder.net
    linear = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    weights = sum(p.numel() for name, p in net.named_parameters() if name.endswith("weight"))
    assert linear == weights, "the FLOP count assumes an MLP decoder"
    return 2 * linear


def net_alone_seconds(model: VAE, x: Tensor, k: int, chunk: int, device: torch.device) -> float:
    """Seconds of the decoder network alone (its matrix products and activations, no
    likelihood, sampling or logsumexp) on k samples of q(z|x) for the batch ``x``, ``chunk``
    at a time: the FLOP-bound reference for the same shapes."""
    with torch.inference_mode():
        q = model.encoder(x)
        zs = [q.rsample((min(chunk, k - start),)) for start in range(0, k, chunk)]
        model.decoder.net(zs[0])  # untimed
        start = _now(device)
        for z in zs:
            model.decoder.net(z)
        return _now(device) - start


def op_shares(model: VAE, x: Tensor, k: int, chunk: int | None, top: int = 8) -> dict[str, float]:
    """Where ours spends its time on the batch ``x``: each operator's share of the CPU time
    (torch.profiler, self time), the ``top`` largest and the rest as ``other``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        evaluate(model, [x], k, chunk)
    times = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(times.values())
    ranked = sorted(times.items(), key=lambda item: -item[1])
    shares = {name: t / total for name, t in ranked[:top]}
    shares["other"] = 1 - sum(shares.values())
    return shares


def gemm_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matrix-product rate: a size^3 product, best of ``repeats``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = _now(device)
        a @ b
        best = min(best, _now(device) - start)
    return 2 * size**3 / best / 1e9


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _status_kib(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", status.read_text(), re.MULTILINE)
    return int(match.group(1)) if match else None


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def overrides(root: Path, batch: int, device: torch.device) -> list[str]:
    return ["experiment=aevb_mnist", f"data.root={root}", "data.download=false",
            "logger=none", f"data.eval_batch_size={batch}",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"]


def build_model(common: list[str], out: Path, device: torch.device):
    """The composed model and data module (not yet set up)."""
    run = build_run(compose_train(common, out))
    return run.model.to(device), run.datamodule


def train_briefly(model: VAE, datamodule, steps: int, device: torch.device) -> None:
    """``steps`` minibatches of the model's own objective and optimizer."""
    optimizer = model.optimizer(model.parameters())
    model.train()
    done = 0
    while done < steps:
        for batch in datamodule.train_dataloader():
            x, _ = datamodule.to_inputs((batch[0].to(device), batch[1]))
            loss, _ = model.objective.loss(model, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps:
                break
    model.eval()


def memory_child(state: Path, side: str) -> None:
    """In a fresh process: rebuild the model and data saved in ``state``, run ``side`` on the
    first batch (every batch has the same shapes, so the same peak), and print its peak memory
    above the setup's as one JSON line."""
    spec = json.loads((state / "spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    model, _ = build_model(spec["overrides"], state / "child", device)
    model.load_state_dict(torch.load(state / "model.pt", weights_only=True))
    model.eval()
    x = torch.load(state / "x.pt", weights_only=True)
    xb = x[:spec["batch"]]
    run_side(side, model, xb[:2], 2, 2, 2)  # load the code paths, untimed
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
        method = "VmHWM at the end - VmRSS when VmHWM was reset (clear_refs 5) after setup"
        base = _status_kib("VmRSS")
    except OSError:
        base = _status_kib("VmRSS")
        method = "ru_maxrss at the end - VmRSS after setup"
        if base is None:
            base = _maxrss_kib()
            method = "ru_maxrss at the end - ru_maxrss after setup"
    torch.manual_seed(0)
    start = time.perf_counter()
    run_side(side, model, xb, spec["k"], spec["chunk"], spec["fixed_chunk"])
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") if method.startswith("VmHWM") else _maxrss_kib()
    print(json.dumps({"side": side, "peak_mib": (peak - base) / 1024, "base_mib": base / 1024,
                      "seconds": seconds, "method": method}))


def memory_subprocess(state: Path, side: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", side, "--state",
                          str(state)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory run of {side} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_draw_check(model: VAE, x: Tensor) -> tuple[float, float]:
    """The largest per-point difference between ours and the hand estimator given the same
    random draws (k = 24 scored 5 at a time): both must compute the same function. And the mean
    KL(q(z|x) || p(z)) of ``x``: far from 0, the check tells log q from log p."""
    with torch.no_grad():
        kl = kl_divergence(model.encoder(x), model.prior.distribution()).mean().item()
    torch.manual_seed(123)
    _, ours = importance_weighted(model, x, 24, 5)
    torch.manual_seed(123)
    hand = hand_log_likelihood(model, x, 24, 5, draw=sample_by_sample)
    torch.testing.assert_close(hand, ours, rtol=1e-5, atol=1e-3)
    return (hand - ours).abs().max().item(), kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=500, help="test points")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per point")
    parser.add_argument("--chunk", type=int, help="samples scored at a time by both sides "
                        "(default: vae-eval's own choice, objectives.auto_chunk)")
    parser.add_argument("--fixed-chunk", type=int, help="also time ours at this chunk, side "
                        "by side (e.g. 250, the default before auto_chunk)")
    parser.add_argument("--batch", type=int, default=100, help="points per batch")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--root", type=Path, help="a data root holding mnist/ (else synthetic)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--eps", type=float, default=0.01,
                        help="nats allowed beyond 4 standard errors in the agreement check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "eval-speed.json")
    parser.add_argument("--memory-child", choices=SIDES + ["ours_fixed"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.state, args.memory_child)
        return
    if args.fixed_chunk:
        SIDES.append("ours_fixed")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.root
        if root is None:
            write_fake_mnist(tmp)
            root = tmp
        common = overrides(root, args.batch, device)
        torch.manual_seed(args.seed)
        model, datamodule = build_model(common, tmp / "run", device)
        datamodule.setup("fit")
        datamodule.setup("test")
        train_briefly(model, datamodule, args.train_steps, device)
        x = datamodule.evaluation_data("test", device)[:args.n]
        batches = x.split(args.batch)
        exact, kl = same_draw_check(model, batches[0][:20])
        print(f"same draws: ours and hand differ by at most {exact:.2e} nats per point "
              f"(mean KL(q || p) {kl:.2f} nats)", flush=True)
        if not gpu:
            torch.save(model.state_dict(), tmp / "model.pt")
            torch.save(x.cpu(), tmp / "x.pt")
            (tmp / "spec.json").write_text(json.dumps({
                "overrides": common, "batch": args.batch, "k": args.k, "chunk": args.chunk,
                "fixed_chunk": args.fixed_chunk,
                "threads": torch.get_num_threads()}))

        chunk = args.chunk or auto_chunk(batches[0], args.k)  # what both sides use
        flops = decoder_flops(model) * args.k * len(x)  # per round and side
        for side in SIDES:  # untimed: the first batch's allocations and code paths
            run_side(side, model, batches[0], args.k, args.chunk, args.fixed_chunk)
        net_gflops: list[float] = []  # per round: the decoder network alone, first batch
        gemm: list[float] = []  # per round: a 2048^3 matrix product
        seconds: dict[str, list[float]] = {side: [] for side in SIDES}
        peak_mib: dict[str, list[float]] = {side: [] for side in SIDES}
        memory_runs: list[dict[str, Any]] = []
        diffs: list[float] = []  # per batch: ours - hand, batch means, weights len(batch)
        weights: list[int] = []
        means: dict[str, list[float]] = {side: [] for side in SIDES}
        for r in range(args.rounds):
            spent = dict.fromkeys(SIDES, 0.0)
            peak = dict.fromkeys(SIDES, 0.0)
            for b, xb in enumerate(batches):
                turn = (r * len(batches) + b) % len(SIDES)
                order = SIDES[turn:] + SIDES[:turn]
                got = {}
                for side in order:
                    torch.manual_seed(args.seed + 1000 * r + 2 * b + (side == "hand"))
                    if gpu:
                        torch.cuda.synchronize(device)
                        torch.cuda.reset_peak_memory_stats(device)
                        base = torch.cuda.memory_allocated(device)
                    start = _now(device)
                    got[side] = run_side(side, model, xb, args.k, args.chunk,
                                         args.fixed_chunk)
                    spent[side] += _now(device) - start
                    if gpu:
                        used = torch.cuda.max_memory_allocated(device) - base
                        peak[side] = max(peak[side], used / 2**20)
                diffs.append(got["ours"] - got["hand"])
                weights.append(len(xb))
                for side in SIDES:
                    means[side].append(got[side])
            for side in SIDES:
                seconds[side].append(spent[side])
            if not gpu:
                turn = r % len(SIDES)
                for side in SIDES[turn:] + SIDES[:turn]:
                    child = memory_subprocess(tmp, side)
                    memory_runs.append(child)
                    peak[side] = child["peak_mib"]
            for side in SIDES:
                peak_mib[side].append(peak[side])
            xb = batches[0]
            net_seconds = net_alone_seconds(model, xb, args.k, chunk, device)
            net_gflops.append(decoder_flops(model) * args.k * len(xb) / net_seconds / 1e9)
            gemm.append(gemm_gflops(device))
            print(f"round {r}: " + ", ".join(
                f"{side} {seconds[side][-1]:.2f} s ({args.n / seconds[side][-1]:.0f} points/s, "
                f"{flops / seconds[side][-1] / 1e9:.1f} GFLOP/s, "
                f"peak {peak_mib[side][-1]:.0f} MiB)" for side in SIDES)
                + f"; decoder network alone {net_gflops[-1]:.1f} GFLOP/s, "
                f"{gemm[-1]:.1f} GFLOP/s in a 2048^3 product"
                + f"; ours/hand time {seconds['ours'][-1] / seconds['hand'][-1]:.3f}, memory "
                f"{peak_mib['ours'][-1] / peak_mib['hand'][-1]:.3f}", flush=True)

    total = sum(weights)
    mean = {side: sum(w * v for w, v in zip(weights, means[side])) / total for side in SIDES}
    diff = sum(w * d for w, d in zip(weights, diffs)) / total
    se = (statistics.stdev(diffs) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    tolerance = 4 * se + args.eps if len(diffs) > 1 else math.inf
    print(f"mean log p(x): ours {mean['ours']:.4f}, hand {mean['hand']:.4f} nats; "
          f"ours - hand {diff:+.4f} (paired over {len(diffs)} batches, se {se:.4f}; allowed "
          f"{tolerance:.4f})")
    assert abs(diff) <= tolerance, f"the estimates disagree: {diff:+.4f} nats > {tolerance:.4f}"

    if not gpu:
        shares = op_shares(model, batches[0], args.k, args.chunk)
        print("ours, CPU time by operator on one batch: " + ", ".join(
            f"{name} {share:.1%}" for name, share in shares.items()))
    time_ratios = [o / h for o, h in zip(seconds["ours"], seconds["hand"])]
    gflops = {side: [flops / t / 1e9 for t in v] for side, v in seconds.items()}
    of_net = [g / n for g, n in zip(gflops["ours"], net_gflops)]
    memory_ratios = [o / h for o, h in zip(peak_mib["ours"], peak_mib["hand"])]
    median_seconds = {side: statistics.median(v) for side, v in seconds.items()}
    median_peak = {side: statistics.median(v) for side, v in peak_mib.items()}
    record: dict[str, Any] = {
        "what": "importance-weighted log p(x) evaluation: ours = "
                "vae_lightning.log_likelihood.evaluate (what vae-eval runs) batch by batch; "
                "hand = a hand-written batched estimator "
                "(one rsample of [chunk, B, Nz] per chunk, running logsumexp, inference_mode) on "
                "the same model (experiment=aevb_mnist, 784-500-20 tanh, Bernoulli) and the same "
                "data; sides in turn batch by batch; ratios ours / hand (time: > 1 is slower)",
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": load,
        "load_average_at_end": os.getloadavg(),
        "data": str(args.root) if args.root else "synthetic MNIST-sized IDX files (uniform "
                "random pixels), test split binarized by the data module's fixed draw",
        "train_steps": args.train_steps,
        "n": len(x), "k": args.k, "batch": args.batch,
        "chunk": chunk, "chunk_chosen_by": "--chunk" if args.chunk else "objectives.auto_chunk",
        "fixed_chunk": args.fixed_chunk,
        "decoder_flops_per_sample": decoder_flops(model),
        "gflops_per_s": gflops,
        "decoder_network_alone_gflops_per_s": net_gflops,
        "gemm_2048_gflops_per_s": gemm,
        "ours_cpu_time_by_operator": shares if not gpu else None,
        "ours_over_network_alone_rate": of_net,
        "median_ours_over_network_alone_rate": statistics.median(of_net),
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": median_seconds,
        "median_points_per_s": {side: args.n / t for side, t in median_seconds.items()},
        "time_ratios": time_ratios,
        "median_time_ratio_ours_over_hand": statistics.median(time_ratios),
        "peak_memory_mib": peak_mib,
        "median_peak_memory_mib": median_peak,
        "memory_ratios": memory_ratios,
        "median_memory_ratio_ours_over_hand": statistics.median(memory_ratios),
        "median_time_ratio_ours_fixed_over_ours": statistics.median(
            o / a for o, a in zip(seconds["ours_fixed"], seconds["ours"]))
        if args.fixed_chunk else None,
        "memory_method": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus "
                         "memory_allocated before, max over batches" if gpu else
                         "fresh subprocess per side per round, on the first batch: "
                         + memory_runs[0]["method"],
        "memory_runs": memory_runs,
        "agreement": {
            "mean_log_px_nats": mean, "ours_minus_hand": diff, "paired_batches": len(diffs),
            "se": se, "allowed": tolerance,
            "same_draws_max_abs_diff": exact, "same_draws_mean_kl_q_p_nats": kl,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"median: ours {median_seconds['ours']:.2f} s, hand {median_seconds['hand']:.2f} s "
          f"for {args.n} points at k={args.k}; ours/hand time "
          f"{record['median_time_ratio_ours_over_hand']:.3f}, peak memory ours "
          f"{median_peak['ours']:.0f} MiB, hand {median_peak['hand']:.0f} MiB, ratio "
          f"{record['median_memory_ratio_ours_over_hand']:.3f}; ours at "
          f"{statistics.median(gflops['ours']):.1f} GFLOP/s, "
          f"{record['median_ours_over_network_alone_rate']:.2f} of the decoder network alone"
          + (f"; ours at chunk {args.fixed_chunk} / ours "
             f"{record['median_time_ratio_ours_fixed_over_ours']:.3f}" if args.fixed_chunk
             else "") + f"; wrote {args.out}")


if __name__ == "__main__":
    main()
