"""Tokenize corpora into Megatron indexed binaries (.bin/.idx + metadata) in one sample layout.

    python tools/preprocess_data.py corpus/*.jsonl --tokenizer work/tokenizer \
        --output-prefix data/web_text --layout text --workers 8

Resumable: rerun the same command after a crash and only unfinished chunks are redone.
"""

import argparse
import sys

from megatron_speech import jobs
from megatron_speech.data.corpus import CorpusError, EmptyCorpusError
from megatron_speech.data.layouts import LAYOUTS
from megatron_speech.data.speech_tokens import SpeechTokenMismatch
from megatron_speech.data.preprocess import PreprocessConfig, preprocess

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="jsonl, jsonl.gz or parquet files")
    parser.add_argument("--tokenizer", required=True, help="directory written by tools/build_tokenizer.py")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--layout", choices=LAYOUTS, default="text")
    parser.add_argument("--field", default="text", help="the text field of each record")
    parser.add_argument("--voice-field", help="tts layout: the field naming each record's voice (e.g. speaker), "
                        "read before the text so the text-to-token model is told which voice to speak")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="skip: leave bad records out and list them in <prefix>.errors.jsonl")
    parser.add_argument("--chunk-mb", type=float, default=64, help="work unit: MB of plain jsonl")
    parser.add_argument("--backend", choices=("cpp", "python"), default="cpp")
    parser.add_argument("--overwrite", action="store_true", help="replace another job's unfinished shards")
    args = parser.parse_args()
    config = PreprocessConfig(
        inputs=args.inputs, output_prefix=args.output_prefix, tokenizer=args.tokenizer, layout=args.layout,
        field=args.field, voice_field=args.voice_field, workers=args.workers, on_error=args.on_error,
        chunk_bytes=max(1, int(args.chunk_mb * (1 << 20))), backend=args.backend, overwrite=args.overwrite,
    )
    try:
        stats = preprocess(config)
    except CorpusError as exc:
        sys.exit(f"error: {exc}\n(rerun with --on-error skip to leave bad records out; finished chunks are kept)")
    except (jobs.JobError, EmptyCorpusError, SpeechTokenMismatch) as exc:
        sys.exit(f"error: {exc}")
    skipped = f", {stats['skipped']} bad records skipped (see {args.output_prefix}.errors.jsonl)" if stats["skipped"] else ""
    print(f"{stats['documents']:,} documents, {stats['tokens']:,} tokens -> {args.output_prefix}.bin/.idx{skipped}")


if __name__ == "__main__":
    main()
