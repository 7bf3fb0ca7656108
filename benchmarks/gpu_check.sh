#!/usr/bin/env bash
# The GPU check, in one run on the device machine (docs/benchmarks.md, "GPU"): the gpu-marked
# tests, the training step against a hand-written CUDA-graph loop (benchmarks/gpu_step.py), and
# Fig. 2 on the real MNIST (both methods, Nz in {3, 5, 10, 20, 200}, one GPU shared by parallel
# joblib jobs) each for 1e7 samples or as many as the time left allows. Everything it reports goes to $OUT
# (at most 8 files). Prepare on the CPU machine, from the project root:
#   bash ../shared/tools/device-kit.sh hydra-joblib-launcher==1.2.0 joblib pytest pluggy iniconfig pygments
#   mkdir -p .data && cp -r ../shared/data/mnist .data/      # .data/ and .whl/ are git-ignored
# then run `bash benchmarks/gpu_check.sh` there, carrying [".whl", ".data"]. DRY=1 runs it on a
# CPU with tiny sizes (to check the script; its figures mean nothing).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
DRY=${DRY:-0}
BUDGET=${BUDGET:-500}  # seconds for the whole script: the device allows 600 per command
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }

if [ -d .whl ] && ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: cannot install the wheels in .whl/" >&2; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export VAE_DATA_DIR=$PWD/.data
# The config groups ship as the package's vae_lightning.conf (pyproject's package-dir); from a
# checkout on PYTHONPATH (the device copies no links), a link to conf/ stands in for it.
[ -e src/vae_lightning/conf ] || ln -s ../../conf src/vae_lightning/conf

if [ "$DRY" != 1 ] && ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); DRY=1 runs it on a CPU" >&2
  exit 1
fi
{ nvidia-smi -L 2>/dev/null; python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', lightning.__version__)"; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# 1. The gpu-marked tests (skipped, not failed, where CUDA is absent).
# The GPU machine has neither wandb nor this package installed (PYTHONPATH=src): the two test
# modules that need them (none of whose tests is gpu-marked) are not collected.
if [ "$DRY" = 1 ]; then tests="tests/test_gpu.py";
else tests="-m gpu --ignore=tests/test_wandb.py --ignore=tests/test_install.py"; fi
timeout 170 python3 -m pytest -q -p no:cacheprovider $tests -rs > "$OUT/pytest-gpu.txt" 2>&1
echo "pytest: exit $? ($(tail -1 "$OUT/pytest-gpu.txt"))"

# 2. The training step: ours (train.py, model.cuda_graph) against the hand-written graphed loop.
if [ "$DRY" = 1 ]; then sizes="--rounds 1 --steps 10 --warmup 5 --steps-per-batch 5";
else sizes="--rounds 3 --steps 3000 --warmup 300 --steps-per-batch 100"; fi
root=(); [ -d .data/mnist ] && root=(--root .data)
timeout 120 python3 benchmarks/gpu_step.py $sizes "${root[@]}" --out "$OUT/gpu-step.json" \
  > "$OUT/gpu-step.txt" 2>&1
echo "gpu_step: exit $? ($(tail -1 "$OUT/gpu-step.txt"))"

# 3. Fig. 2 on MNIST: both methods x 5 latent sizes, 10 jobs at once on the one GPU, each with
#    the data on the device and the graphed step, for 1e7 samples or until Lightning's
#    max_time (what the time left allows) ends its training; then each is evaluated as usual.
samples=1e7; [ "$DRY" = 1 ] && samples=2000
sweep=$(mktemp -d)/fig2
seconds=$(( $(left) - 90 ))  # start-up, the final evaluations, the archive
if [ "$seconds" -gt 30 ]; then
  if [ "$DRY" = 1 ]; then dev=(trainer.accelerator=cpu data.steps_per_batch=2);
  else dev=(trainer.accelerator=gpu data.on_device=true data.steps_per_batch=100); fi
  timeout $((seconds + 80)) python3 train.py -m experiment=aevb_mnist,wake_sleep_mnist \
    model.latent=3,5,10,20,200 trainer.max_samples=$samples "${dev[@]}" model.cuda_graph=true \
    "trainer.max_time={seconds: $seconds}" data.download=false callbacks.figures.n_points=0 \
    logger=csv trainer.enable_progress_bar=false hydra/launcher=joblib hydra.launcher.n_jobs=10 \
    "hydra.sweep.dir=$sweep" > "$OUT/fig2-log.txt" 2>&1
  echo "fig2: exit $? ($(tail -1 "$OUT/fig2-log.txt"))"
  (cd "$(dirname "$sweep")" && find fig2 \( -name results.json -o -name curve.json \
    -o -name metrics.csv -o -name train.log \) -print0 | tar czf "$OUT/fig2.tar.gz" --null -T -)
fi
echo "gpu_check: done in $((SECONDS - start)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
