#!/usr/bin/env bash
# The mini text-to-token model and synthesis, end to end on CPU (see README.md for the time on 2
# cores). Needs the speech corpus and a speech tokenizer of either kind (examples/speech_tokenizer/
# README.md; the Whisper recipe's by default) and the default corpus of the small default
# (examples/tiny/run.sh). Every step is skipped when its output exists.
#
#   SPEECH_TOKENIZER=work/speech_tokenizer/X/X.nemo W=work/t2t_X bash examples/synthesize/run_mini.sh
# runs the chain on another speech tokenizer's tokens in its own folder (the configs name work/t2t;
# the folder is passed to every step instead).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
SPEECH_TOKENIZER=${SPEECH_TOKENIZER:-work/speech_tokenizer/whisper_vq_mini/whisper_vq_mini.nemo}
W=${W:-work/t2t}
# VOICE=espeak:en-gb: TTS pairs name their voice, the WER check speaks each test sentence in its
# recording's voice, synthesis speaks in VOICE (README: measured, no better; off by default)
VOICE=${VOICE:-}
# TRAIN_SET: more overrides for the text-to-token training, e.g. TRAIN_SET="--set checkpoint.save_interval=500"
# AVERAGE=2: judge and synthesize with the mean of the last two saved checkpoints (README: measured
# with save_interval 500, better on one chain of two; off by default: the last checkpoint alone)
AVERAGE=${AVERAGE:-1}
PAIRS=(); CHECK=(); SPEAK=(); TRAIN=(${TRAIN_SET:-})
if [ -n "$VOICE" ]; then
  PAIRS=(--voice-field speaker); CHECK=(--voices-from-records); SPEAK=(--set "generation.voice=$VOICE")
fi

# 1. speech tokens of the corpus (contract 2)
for split in train test test_heldout_voice; do
  [ -f $W/tokens_$split.jsonl ] || $PY tools/tokenize_speech.py work/speech_corpus/$split.jsonl \
    $W/tokens_$split.jsonl --model "$SPEECH_TOKENIZER" --batch-size 32
done
# 2. the text-to-token model's tokenizer: a small BPE on the transcripts, plus the speech codes
#    (as many as the speech tokenizer has: recorded beside its tokens)
[ -f $W/tokenizer/speech_text_tokenizer.json ] || $PY tools/build_tokenizer.py $W/tokenizer \
  --train-on $W/tokens_train.jsonl --text-vocab-size 512 --codebook-of $W/tokens_train.jsonl
# 3. TTS pairs as indexed binaries: [voice] text <|begin_of_audio|> tokens <|end_of_audio|> ([voice] with VOICE)
[ -f $W/data/tts_train.meta.json ] || $PY tools/preprocess_data.py $W/tokens_train.jsonl \
  --tokenizer $W/tokenizer --output-prefix $W/data/tts_train --layout tts "${PAIRS[@]}"
# 4. train through the pre-training entry point (resumes if interrupted); with AVERAGE, the mean of
#    its last checkpoints
$PY -m torch.distributed.run --standalone --nproc-per-node "${NPROC:-2}" tools/pretrain.py \
  --config examples/synthesize/configs/text_to_token_mini.yaml --set tokenizer=$W/tokenizer \
  --set "data.sources=[{prefix: $W/data/tts_train, weight: 1.0, layout: tts, loss: audio}]" \
  --set schedule.metrics_file=$W/metrics.jsonl --set checkpoint.dir=$W/checkpoints "${TRAIN[@]}"
CHECKPOINTS=$W/checkpoints
if [ "$AVERAGE" -gt 1 ]; then
  CHECKPOINTS=$W/checkpoints_avg$AVERAGE
  [ -f $CHECKPOINTS/latest ] || $PY tools/average_checkpoints.py --checkpoint $W/checkpoints \
    --tokenizer $W/tokenizer --last "$AVERAGE" --output $CHECKPOINTS
fi
MODEL=(--config examples/synthesize/mini.yaml --set checkpoint=$CHECKPOINTS --set tokenizer=$W/tokenizer)
# 5. do the synthetic tokens keep their words? (held-out sentences, training voices and held-out voice)
[ -f $W/eval_test.json ] || $PY tools/evaluate_synthesis.py "${MODEL[@]}" \
  --speech-tokenizer "$SPEECH_TOKENIZER" --texts $W/tokens_test.jsonl --output $W/eval_test.json "${CHECK[@]}"
[ -f $W/eval_test_heldout_voice.json ] || $PY tools/evaluate_synthesis.py "${MODEL[@]}" \
  --speech-tokenizer "$SPEECH_TOKENIZER" --texts $W/tokens_test_heldout_voice.jsonl \
  --output $W/eval_test_heldout_voice.json "${SPEAK[@]}"
# 6. synthesize interleaved data from the default corpus, then indexed binaries for pre-training
#    (the pre-training vocabulary: the small default's text BPE with this tokenizer's codes)
[ -f $W/lm_tokenizer/speech_text_tokenizer.json ] || $PY tools/build_tokenizer.py $W/lm_tokenizer \
  --train-on work/tiny/corpus.jsonl --text-vocab-size 2048 --codebook-of $W/tokens_train.jsonl
SYNTH=("${MODEL[@]}" --set indexed_tokenizer=$W/lm_tokenizer --set output_dir=$W/synth_mini \
  --set indexed_prefix=$W/interleaved_mini "${SPEAK[@]}")
$PY tools/synthesize_interleaved.py "${SYNTH[@]}"
$PY tools/synthesize_interleaved.py "${SYNTH[@]}" --finalize
