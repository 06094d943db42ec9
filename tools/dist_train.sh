#!/usr/bin/env bash
# Distributed training on one machine: tools/dist_train.sh CONFIG NGPUS [train.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as torchrun expects.
set -euo pipefail
CONFIG=$1
NGPUS=$2
shift 2
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$NGPUS" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
