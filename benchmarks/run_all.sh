#!/usr/bin/env bash
# Every benchmark in one command (docs/benchmarks.md), run from the repository root with the venv:
#   bash benchmarks/run_all.sh [TAG]      # TAG names the result files; default: cpu, or cuda with a GPU
# 1. bench_step.py: one optimizer.step() of every method against torch.optim.AdamW(foreach=True) and plain
#    SGD on ResNet-18's weights, one process; state bytes per parameter.
# 2. bench_engines.py: the end-to-end training step under FSDP2, ZeRO-2 and ZeRO-3 on NPROC ranks (2) for
#    every method against AdamW, with collectives and bytes per step.
# Writes benchmarks/results/<TAG>_step.json and <TAG>_engines.json. REPEATS, ROUNDS, NPROC override sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
tag=${1:-$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
mkdir -p benchmarks/results
$PY benchmarks/bench_step.py --repeats "${REPEATS:-100}" --json "benchmarks/results/${tag}_step.json"
$PY -m torch.distributed.run --standalone --nproc_per_node "${NPROC:-2}" benchmarks/bench_engines.py \
  --rounds "${ROUNDS:-50}" --json "benchmarks/results/${tag}_engines.json"
