#!/bin/bash
# Train on NNODES machines x NPROC GPUs with torchrun; run this on every node with the same
# MASTER_ADDR and its own NODE_RANK:
#   MASTER_ADDR=node0 NODE_RANK=0 NNODES=2 NPROC=8 bash scripts/torchrun_multinode.sh
# Lightning recognises torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) and starts no processes itself.
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the first node's address}" "${NODE_RANK:?set NODE_RANK}"
NNODES="${NNODES:-2}" NPROC="${NPROC:-8}"
torchrun --nnodes "${NNODES}" --nproc-per-node "${NPROC}" --node-rank "${NODE_RANK}" \
    --master-addr "${MASTER_ADDR}" --master-port "${MASTER_PORT:-29500}" \
    cli.py fit --config configs/cifar10dvs.yaml --config configs/trainer/ddp_multinode.yaml \
    --trainer.num_nodes "${NNODES}" --trainer.devices "${NPROC}" "$@"
