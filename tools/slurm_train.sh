#!/usr/bin/env bash
# Training on a Slurm cluster: one srun task per node, each starting torchrun for its GPUs.
#   GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]
# Environment: GPUS (total, default 8), GPUS_PER_NODE (default 8, or GPUS when fewer),
# CPUS_PER_GPU (default 5), MASTER_PORT (default 29500), MAX_RESTARTS (default 0),
# SRUN_ARGS (extra srun options, e.g. "--quotatype=auto"), PYTHON.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
exec bash "$(dirname "$0")/slurm_launch.sh" "$PARTITION" "$JOB_NAME" \
    "$(dirname "$0")/train.py" "$CONFIG" --work-dir "$WORK_DIR" "$@"
