#!/usr/bin/env bash
# Evaluation on a Slurm cluster (see tools/slurm_train.sh for the environment):
#   GPUS=8 bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CKPT [test.py options]
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CKPT=$4
shift 4
MASTER_PORT=${MASTER_PORT:-29501} exec bash "$(dirname "$0")/slurm_launch.sh" "$PARTITION" \
    "$JOB_NAME" "$(dirname "$0")/test.py" "$CONFIG" "$CKPT" "$@"
