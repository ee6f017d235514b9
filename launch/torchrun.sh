#!/usr/bin/env bash
# torchrun wrapper: autoopt train on this node's GPUs (or NPROC processes on CPU).
#   launch/torchrun.sh configs/digits_agd.yaml train.strategy=fsdp2
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR (the SLURM scripts do).
set -euo pipefail
NPROC="${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
if [[ "${NNODES:-1}" -gt 1 ]]; then
  exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC" --rdzv_backend c10d \
    --rdzv_endpoint "${MASTER_ADDR}:${MASTER_PORT:-29500}" --rdzv_id "${RDZV_ID:-autoopt}" -m autoopt_dist train "$@"
fi
exec torchrun --standalone --nproc_per_node "$NPROC" -m autoopt_dist train "$@"
