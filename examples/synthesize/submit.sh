#!/usr/bin/env bash
# Submit a synthesis job: an array of SHARDS tasks, then a finalize job that runs when all succeeded.
#   SHARDS=64 GPUS=1 examples/synthesize/submit.sh examples/synthesize/mini.yaml [--set key=value ...]
# Prints the array job id and the finalize job id. Rerunning it after failures redoes only what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:?usage: submit.sh CONFIG [--set key=value ...]}
shift
SHARDS=${SHARDS:-8}
GPU_FLAGS=()
[ "${GPUS:-0}" -gt 0 ] && GPU_FLAGS=(--gpus-per-task="$GPUS")
array=$(sbatch --parsable --array=0-$((SHARDS - 1)) "${GPU_FLAGS[@]}" --export=ALL,CONFIG="$CONFIG" \
  ${SBATCH_OPTIONS:-} examples/synthesize/synthesize.sbatch "$@")
final=$(sbatch --parsable --dependency=afterok:"${array%%;*}" --job-name=synthesize-finalize \
  --export=ALL,CONFIG="$CONFIG" ${SBATCH_OPTIONS:-} examples/synthesize/synthesize.sbatch --finalize "$@")
echo "$array $final"
