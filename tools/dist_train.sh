#!/usr/bin/env bash
# Distributed training on one machine: tools/dist_train.sh CONFIG NGPUS [train.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as torchrun expects;
# MAX_RESTARTS=N restarts the workers up to N times after a failure (torchrun
# --max-restarts; pair it with --resume so a restart continues from the last checkpoint).
set -euo pipefail
CONFIG=$1
NGPUS=$2
shift 2
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$NGPUS" --max-restarts="${MAX_RESTARTS:-0}" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
