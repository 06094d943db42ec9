#!/usr/bin/env bash
# Shared by tools/slurm_train.sh and tools/slurm_test.sh:
#   slurm_launch.sh PARTITION JOB_NAME SCRIPT [script arguments]
# srun starts one task per node; inside it (SLURM_NODEID set) this script starts torchrun
# with the node count, this node's rank and the first node of the allocation as master.
set -euo pipefail
if [ -z "${BEVFORMER_SLURM_NODE:-}" ]; then
    PARTITION=$1
    JOB_NAME=$2
    shift 2
    GPUS=${GPUS:-8}
    GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
    if [ $((GPUS % GPUS_PER_NODE)) -ne 0 ]; then
        echo "GPUS=$GPUS is not a multiple of GPUS_PER_NODE=$GPUS_PER_NODE" >&2
        exit 2
    fi
    NODES=$((GPUS / GPUS_PER_NODE))
    # shellcheck disable=SC2086  # SRUN_ARGS holds several options
    exec srun --partition="$PARTITION" --job-name="$JOB_NAME" --nodes="$NODES" \
        --ntasks-per-node=1 --gres=gpu:"$GPUS_PER_NODE" \
        --cpus-per-task=$((GPUS_PER_NODE * ${CPUS_PER_GPU:-5})) --kill-on-bad-exit=1 \
        ${SRUN_ARGS:-} \
        env BEVFORMER_SLURM_NODE=1 GPUS_PER_NODE="$GPUS_PER_NODE" bash "$0" "$@"
fi
SCRIPT=$1
shift
# sed reads the whole list: head would end the pipe early (SIGPIPE fails it under pipefail)
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --node_rank="$SLURM_NODEID" \
    --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$GPUS_PER_NODE" --max-restarts="${MAX_RESTARTS:-0}" \
    "$SCRIPT" "$@" --launcher pytorch
