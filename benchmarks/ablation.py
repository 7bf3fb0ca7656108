"""What each change bought, in one run: the default pipeline (c) of throughput.py, with the code of
several source trees in turn, each paired step by step with its own hand-written loops.

Each tree's (c) runs in a subprocess whose ``vae_lightning`` is the tree's ``src/`` (this
checkout's benchmarks and tests: the same timer and hand loops for all), paired as throughput.py
pairs it: after each of (c)'s steps a callback steps the loop (a) (our maths) and ``hand_elbo``
(the PyTorch example's ELBO), so every ratio is measured under the load of its own moment. The
trees take turns round by round. Reported per tree: the median over rounds of ours/hand_elbo and
ours/hand, and each round's.

Usage: python benchmarks/ablation.py NAME=TREE [NAME=TREE ...] [--rounds 5] [--steps 200]
       [--warmup 40] [--threads 1] [--steps-per-batch 1] [--out FILE]
       [-- train.py overrides...]
--steps-per-batch K times (c) with data.steps_per_batch=K (warmup and steps rounded up to whole
batches of K steps, as throughput.py's (c_K)).
A tree is a directory holding ``src/vae_lightning`` (e.g. a copy of this checkout at another
commit, with ``src/vae_lightning/conf`` linking to its ``conf``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_RUN = """
import json, sys, torch
from pathlib import Path
from data_throughput import write_fake_mnist
from throughput import BATCH, ours
tmp, warmup, steps, threads, k, *overrides = sys.argv[1:]
torch.set_num_threads(int(threads))
tmp = Path(tmp)
if not (tmp / "mnist").exists():
    write_fake_mnist(tmp)
common = ["data=mnist", f"data.root={tmp}", "data.download=false", f"data.batch_size={BATCH}",
          "trainer.accelerator=cpu", "~callbacks.bound_curve", *overrides]
run = ours(common, tmp / f"run{len(list(tmp.glob('run*')))}", int(warmup), int(steps), int(k))
print("RESULT " + json.dumps(run["samples_per_s"]))
"""


def one_run(tree: Path, data: Path, warmup: int, steps: int, threads: int, k: int,
            overrides: list[str]) -> dict[str, float]:
    """Samples/s of ours, hand and hand_elbo from one paired run with ``tree``'s code."""
    paths = [str(tree / "src"), str(REPO / "benchmarks"), str(REPO / "tests")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", ONE_RUN, str(data), str(warmup), str(steps),
                           str(threads), str(k), *overrides], cwd=tree, env=env,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{tree}: {proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="NAME=TREE, in the order they take turns")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps-per-batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results"
                        / "ablation-cpu.json")
    args, overrides = parser.parse_known_args()
    trees = dict(item.split("=", 1) for item in args.trees)
    k = max(1, args.steps_per_batch)
    window = [-(-n // k) * k for n in (args.warmup, args.steps)]  # whole batches of K steps
    load = os.getloadavg()
    ratios: dict[str, dict[str, list[float]]] = {
        name: {"ours/hand_elbo": [], "ours/hand": []} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, tree in trees.items():
                rate = one_run(Path(tree).resolve(), Path(tmp), *window, args.threads, k,
                               overrides)
                for hand in ("hand_elbo", "hand"):
                    ratios[name][f"ours/{hand}"].append(rate["ours"] / rate[hand])
                print(f"round {r} {name}: " + ", ".join(
                    f"{k} {v[-1]:.3f}" for k, v in ratios[name].items()), flush=True)
    medians = {name: {k: statistics.median(v) for k, v in by.items()}
               for name, by in ratios.items()}
    for name, by in medians.items():
        print(f"median {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in by.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "what": "throughput.py's (c) (the default pipeline, batch 128, fake MNIST) with each "
                "tree's code, paired step by step with the hand loops (a) and hand_elbo; trees "
                "in turn, round by round",
        "trees": trees, "overrides": overrides, "rounds": args.rounds,
        "warmup_steps": window[0], "timed_steps": window[1], "steps_per_batch": k,
        "threads": args.threads,
        "cpu_count": os.cpu_count(), "load_average_at_start": load,
        "load_average_at_end": os.getloadavg(),
        "ratios": ratios, "median_ratios": medians,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
