#!/usr/bin/env bash
# Distributed evaluation: tools/dist_test.sh CONFIG CKPT NGPUS [test.py options]
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, MAX_RESTARTS: as tools/dist_train.sh.
set -euo pipefail
CONFIG=$1
CKPT=$2
NGPUS=$3
shift 3
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29501}" \
    --nproc_per_node="$NGPUS" --max-restarts="${MAX_RESTARTS:-0}" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CKPT" --launcher pytorch "$@"
