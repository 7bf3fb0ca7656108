#!/usr/bin/env bash
# The benchmark issue's long runs (docs/benchmark.md): each starts, or resumes exactly from its
# committed checkpoints/last.ckpt, in the background with one thread at nice 19, so that tests
# and other work keep the machine. Its run directory is benchmarks/long/<name>; what a new
# machine needs to resume (last.ckpt, curve.json, the Hydra record, stretches.json) is committed,
# the rest is ignored (benchmarks/long/.gitignore).
#
#   bash benchmarks/long/run.sh              # every run below (a finished one is skipped),
#                                            # all at once: on a small machine name a few
#   bash benchmarks/long/run.sh iwae_k1      # one
#   bash benchmarks/long/run.sh --status     # where each stands
#   bash benchmarks/long/run.sh --record [name ...]  # evaluate each IWAE (or the named) run's
#                                            # last.ckpt (k = 5000, all test images) and append
#                                            # the point to its stretches.json (one thread;
#                                            # EVAL_THREADS=2 for two)
#
# The benchmark table's rows are the other long job: `OMP_NUM_THREADS=1 nice vae-bench run
# --missing` trains, evaluates and records every row without a record (run it again to go on).
set -euo pipefail
cd "$(dirname "$0")/../.."

# The IWAE runs take the same steps as one per batch (bit-identical), with Lightning's per-batch
# cost paid once per 10; one log line per epoch (300 batches of 10 minibatches of 20).
FAST="data.steps_per_batch=10 trainer.log_every_n_steps=300"
declare -A RUNS=(
  [iwae_k1]="experiment=iwae_mnist model.objective.k=1 $FAST"
  [iwae_k5]="experiment=iwae_mnist model.objective.k=5 $FAST"
  # The reproduction page's Frey Face wake-sleep runs (docs/reproduction_notes.md): at 1e7
  # samples each is copied to docs/reproduction/records/frey/wake_sleep_nz<N>.
  [frey_wake_sleep_nz2]="experiment=wake_sleep_frey model.latent=2 trainer.max_samples=1e7"
  [frey_wake_sleep_nz5]="experiment=wake_sleep_frey model.latent=5 trainer.max_samples=1e7"
  [frey_wake_sleep_nz10]="experiment=wake_sleep_frey model.latent=10 trainer.max_samples=1e7"
  [frey_wake_sleep_nz20]="experiment=wake_sleep_frey model.latent=20 trainer.max_samples=1e7"
)
RECORDED="iwae_k1 iwae_k5"  # the runs --record evaluates when none is named
COMMON="trainer.enable_progress_bar=false"
export VAE_DATA_DIR="${VAE_DATA_DIR:-$(cd .. && pwd)/shared/data}"

if [ "${1:-}" = "--status" ]; then
  for name in "${!RUNS[@]}"; do
    ckpt="benchmarks/long/$name/checkpoints/last.ckpt"
    if [ -f "$ckpt" ]; then
      python - "$ckpt" <<'PY'
import sys, torch
c = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
# The learning rate the next step takes: the schedule's stage shows (a stale one did, 8c3d29d).
lr = c["optimizer_states"][0]["param_groups"][0]["lr"]
print(f"{sys.argv[1]}: epoch {c['epoch'] + 1}, step {c['global_step']}, "
      f"{c.get('samples_seen', 0):,} samples seen, lr {lr:.3g}")
PY
    else
      echo "$ckpt: not started"
    fi
  done
  exit 0
fi

if [ "${1:-}" = "--record" ]; then
  shift
  # shellcheck disable=SC2086
  for name in "${@:-$RECORDED}"; do
    dir="benchmarks/long/$name"
    [ -f "$dir/checkpoints/last.ckpt" ] || continue
    out=$(mktemp -d)
    cp "$dir/checkpoints/last.ckpt" "$out/last.ckpt"  # the point, while training goes on
    OMP_NUM_THREADS=${EVAL_THREADS:-1} nice -n 5 python eval.py ckpt_path="$out/last.ckpt" eval.k=5000 \
      output_dir="$out" eval.data_root="$VAE_DATA_DIR" hydra.run.dir="$out/log" > "$out/eval.out" 2>&1 \
      || { echo "$name: evaluation failed, see $out/eval.out" >&2; continue; }
    python - "$out" "$dir" <<'PY'
import json, subprocess, sys, time, torch
out, run = sys.argv[1:]
e = json.load(open(f"{out}/eval.json"))
c = torch.load(f"{out}/last.ckpt", map_location="cpu", weights_only=True)
point = {"epoch": c["epoch"] + 1, "samples_seen": c.get("samples_seen"),
         "test_elbo": e["elbo"]["nats"], "iw": e["iw"]["nats"], "iw_se": e["iw"]["nats_se"],
         "k": e["k"], "n": e["n"], "active_units": e["active_units"],
         "date": time.strftime("%Y-%m-%d"),
         "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()}
path = f"{run}/stretches.json"
try:
    points = json.load(open(path))
except FileNotFoundError:
    points = []
points.append(point)
open(path, "w").write(json.dumps(points, indent=1) + "\n")
print(run, point)
PY
  done
  exit 0
fi

for name in "${@:-${!RUNS[@]}}"; do
  [ -n "${RUNS[$name]:-}" ] || { echo "no long run named $name (known: ${!RUNS[*]})" >&2; exit 2; }
  dir="benchmarks/long/$name"
  if python -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["status"] != "completed")' \
      "$dir/results.json" 2>/dev/null; then
    echo "$name: finished (its results.json says completed); --record $name evaluates it"
    continue
  fi
  resume=""
  [ -f "$dir/checkpoints/last.ckpt" ] && resume="ckpt_path=$dir/checkpoints/last.ckpt"
  mkdir -p "$dir"
  echo "$(date -Is) $name: ${resume:-fresh start}" >> "$dir/console.log"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup nice -n 19 python train.py ${RUNS[$name]} $COMMON \
    hydra.run.dir="$dir" $resume >> "$dir/console.log" 2>&1 &
  echo "$name: started (pid $!, ${resume:-fresh}); log in $dir/console.log"
done
