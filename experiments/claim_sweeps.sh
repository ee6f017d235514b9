#!/usr/bin/env bash
# The claims that `autoopt sweep` itself tests (docs/results.md): each block is the exact command behind a
# plot and table there. Run from the repository root with the venv: `bash experiments/claim_sweeps.sh [NAME]`
# (NAME: agd | hyper | ecco; default all). Outputs go to runs/claims/<name>/ and the CSV and plot are
# copied to docs/results/. Single process on the CPU; wandb off (add track.wandb=offline to log).
set -euo pipefail
cd "$(dirname "$0")/.."
AUTOOPT=${AUTOOPT:-.venv/bin/autoopt}
OUT=runs/claims
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
publish() { cp "$OUT/$1/results.csv" "docs/results/$2.csv"; cp "$OUT/$1/sweep.png" "docs/results/$2.png"; }

agd() {  # AGD trains deep fully-connected nets where Adam and SGD fail, and is close to tuned Adam
  for depth in 16 4; do
    rm -rf "$OUT/agd_depth$depth"
    $AUTOOPT sweep configs/digits_agd.yaml model.depth=$depth model.width=128 train.epochs=10 track.wandb=disabled \
      --param optim.lr --log-grid 1e-4:1e0:5 --optims agd,adamw,sgd --seeds 2 --out "$OUT/agd_depth$depth"
    publish "agd_depth$depth" "agd_depth${depth}_lr_sweep"
  done
}

hyper() {  # taller hypergradient towers are less sensitive to the initial step size
  local common=(configs/digits_agd.yaml model.depth=2 model.width=64 model.agd_compatible=false train.loss=xent
                data.batch_size=64 train.epochs=5 track.wandb=disabled)
  local grid=(--param optim.lr --log-grid 1e-4:1e0:5 --seeds 2 --out "$OUT/hyper")
  rm -rf "$OUT/hyper"
  $AUTOOPT sweep "${common[@]}" "${grid[@]}" --optims sgd --label "1 level"
  $AUTOOPT sweep "${common[@]}" optim.hyper_lrs=1e-3 "${grid[@]}" --optims hyper_sgd --label "2 levels"
  $AUTOOPT sweep "${common[@]}" "optim.hyper_lrs=[1e-3,1e-4]" "${grid[@]}" --optims hyper_sgd --label "3 levels"
  $AUTOOPT sweep "${common[@]}" "${grid[@]}" --optims adamw --label "1 level"
  $AUTOOPT sweep "${common[@]}" optim.hyper_lrs=1e-5 "${grid[@]}" --optims hyper_adam --label "2 levels"
  publish hyper hyper_tower_lr_sweep
}

ecco() {  # ECCO-DNN's accuracy is flat over three orders of magnitude of eta
  local common=(configs/digits_agd.yaml model.depth=5 model.width=200 model.agd_compatible=false train.loss=xent
                data.batch_size=100 train.epochs=10 track.wandb=disabled)
  rm -rf "$OUT/ecco"
  $AUTOOPT sweep "${common[@]}" --param optim.eta --log-grid 1e-2:1e2:5 --optims ecco --seeds 2 --out "$OUT/ecco" \
    --label batched
  $AUTOOPT sweep "${common[@]}" optim.ecco_mode=faithful --param optim.eta --log-grid 1e-2:1e2:5 --optims ecco \
    --seeds 2 --out "$OUT/ecco" --label faithful
  publish ecco ecco_eta_sweep
}

for name in "${@:-agd hyper ecco}"; do
  for claim in $name; do "$claim"; done
done
