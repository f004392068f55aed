#!/usr/bin/env bash
# The built-in small default, end to end on CPU: corpus -> tokenizer -> indexed binaries -> pre-training
# (2 gloo processes, data-parallel). Outputs go to work/tiny/. Extra arguments go to tools/pretrain.py,
# e.g. `--set schedule.steps=20`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
W=work/tiny
[ -f $W/corpus.jsonl ] || $PY tools/build_default_corpus.py $W/corpus.jsonl
[ -f $W/tokenizer/speech_text_tokenizer.json ] || \
  $PY tools/build_tokenizer.py $W/tokenizer --train-on $W/corpus.jsonl --text-vocab-size 2048 --codebook-size 512
[ -f $W/data/pydoc_text.meta.json ] || \
  $PY tools/preprocess_data.py $W/corpus.jsonl --tokenizer $W/tokenizer --output-prefix $W/data/pydoc_text
$PY -m torch.distributed.run --standalone --nproc-per-node "${NPROC:-2}" tools/pretrain.py \
  --config examples/tiny/pretrain.yaml "$@"
