#!/usr/bin/env bash
# The one launcher every sbatch script calls: one srun task a rank, and a requeue when the run
# stopped on an exit signal after saving its checkpoint (tools/pretrain.py exits 75 then).
#
#   bash examples/pretrain/launch.sh CONFIG [--set key=value ...]     (inside an sbatch allocation)
set -uo pipefail
CONFIG=$1
shift
PY=${PYTHON:-.venv/bin/python}
PREEMPTED=75

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "[launch] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_NTASKS tasks on" \
     "$SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT, config $CONFIG"

srun --kill-on-bad-exit=0 "$PY" tools/pretrain.py --config "$CONFIG" "$@"
rc=$?
if [ "$rc" -eq "$PREEMPTED" ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "${MAX_REQUEUES:-20}" ]; then
    echo "[launch] stopped by a signal after saving a checkpoint: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "[launch] stopped by a signal; requeue limit ${MAX_REQUEUES:-20} reached"
fi
exit "$rc"
