#!/usr/bin/env bash
# The short dSprites runs of docs/disentanglement.md: the plain VAE and beta-VAE (beta = 4),
# trained for STEPS steps of 64 images on one CPU thread (or until MAX_TIME, on a busy machine),
# then evaluated by vae-eval (the bound on 1000 test images, and every disentanglement metric
# with the sample sizes below, over SEEDS seeds). The runs go to $OUT/<name>/ (checkpoints stay
# there, out of the repository; a run trained, or evaluated, already is not run again); each
# run's record, its eval.json and run config, is copied to docs/disentanglement/records/<name>/
# (committed), from which the page's table is built:
#   python scripts/disentanglement_table.py docs/disentanglement/records/*/eval/eval.json \
#     --write docs/disentanglement.md
# Usage: benchmarks/disentanglement/run.sh [name ...]   (default: vae beta_vae; also
# beta_tc_vae factor_vae dip_vae_i dip_vae_ii, with their objectives' default weights)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/vae-disentanglement}
STEPS=${STEPS:-2500}
MAX_TIME=${MAX_TIME:-00:00:14:00}
SEEDS=${SEEDS:-3}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
declare -A MODEL=([vae]="model.objective.beta=1" [beta_vae]="model.objective.beta=4"
                 [beta_tc_vae]="model/objective=beta_tc" [factor_vae]="model/objective=factor_vae"
                 [dip_vae_i]="model/objective=dip_vae_i" [dip_vae_ii]="model/objective=dip_vae_ii")
COMMON=(data=dsprites model.latent=10 data.batch_size=64 model.optimizer.lr=5e-4
        "model.encoder.net.hidden=[512]" "model.decoder.net.hidden=[512]"
        trainer.max_steps="$STEPS" trainer.max_time="$MAX_TIME" trainer.limit_val_batches=0
        callbacks.bound_curve=null
        callbacks.figures.traversals=true callbacks.figures.traversal_gif=true
        logger=csv trainer.enable_progress_bar=false)
# Below disentanglement_lib's sample sizes where a CPU needs it (docs/disentanglement.md).
METRICS=("eval.metrics=[beta_vae,factor_vae,mig,sap,dci,modularity]" eval.metric_seeds="$SEEDS"
         eval.metric_options.beta_vae.num_train=2000 eval.metric_options.beta_vae.num_eval=1000
         eval.metric_options.factor_vae.num_train=2000
         eval.metric_options.factor_vae.num_eval=1000
         eval.metric_options.dci.num_train=2000 eval.metric_options.dci.num_test=1000)
for name in "${@:-vae beta_vae}"; do
  for one in $name; do
    run=$OUT/$one
    if [ ! -f "$run/checkpoints/last.ckpt" ]; then
      nice -n 19 python train.py "${COMMON[@]}" ${MODEL[$one]} hydra.run.dir="$run"
    fi
    if [ ! -f "$run/eval/eval.json" ]; then
      nice -n 19 python eval.py ckpt_path="$run/checkpoints/last.ckpt" eval.k=100 eval.limit=1000 \
        eval.device=cpu "${METRICS[@]}" output_dir="$run/eval" hydra.run.dir="$run/eval"
    fi
    record=docs/disentanglement/records/$one
    mkdir -p "$record/eval" "$record/.hydra"
    cp "$run/eval/eval.json" "$record/eval/eval.json"
    cp "$run/.hydra/config.yaml" "$record/.hydra/config.yaml"
  done
done
