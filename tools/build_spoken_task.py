"""Turn a text task file (likelihood or QA items, contract 9) into its spoken version.

    .venv/bin/python tools/build_spoken_task.py cloze.jsonl cloze_spoken.jsonl \
        --speech-tokenizer work/speech_tokenizer/whisper_vq_mini/whisper_vq_mini.nemo --voices flite:rms
    .venv/bin/python tools/build_spoken_task.py qa.jsonl qa_spoken.jsonl --speech-tokenizer X.nemo \
        --audio-manifest recorded.jsonl     # {"audio_filepath", "item", "field"} a line

Wavs, the manifest and the tokens are kept in ``<output>.work/``; a rerun resumes there.
"""

import argparse
import json

from megatron_speech.data.corpus import CorpusError
from megatron_speech.evaluation.spoken import SpokenTaskConfig, build_spoken_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", help="text task jsonl")
    parser.add_argument("output", help="spoken task jsonl")
    parser.add_argument("--speech-tokenizer", required=True, help=".nemo of either speech tokenizer")
    defaults = SpokenTaskConfig("", "", "")
    parser.add_argument("--voices", nargs="+", default=defaults.voices, help="engine:voice, one drawn per item")
    parser.add_argument("--audio-manifest", help="recorded audio instead of voices")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    args = parser.parse_args()
    config = SpokenTaskConfig(args.task, args.output, args.speech_tokenizer, args.voices, args.audio_manifest,
                              args.seed, workers=args.workers, batch_size=args.batch_size)
    try:
        print(json.dumps(build_spoken_task(config), indent=2))
    except (CorpusError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
