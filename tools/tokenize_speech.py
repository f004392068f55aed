"""Turn a speech manifest into speech-token jsonl for tools/preprocess_data.py (layouts speech/asr/tts).

    .venv/bin/python tools/tokenize_speech.py work/speech_corpus/train.jsonl work/speech_tokens/train.jsonl \
        --model work/speech_tokenizer/speech_tokenizer_mini/speech_tokenizer_mini.nemo [--on-error skip]

Batched, resumable (rerun the same command after a crash), shardable (one shard a Slurm array task;
the shard that completes the last chunk writes the output), and strict about bad audio.
"""

import argparse
import json
import sys

from megatron_speech import jobs
from megatron_speech.data.corpus import CorpusError
from megatron_speech.speech_tokenizer.tokenize import TokenizeConfig, tokenize_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("output")
    parser.add_argument("--model", required=True, help=".nemo file of the speech tokenizer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                        help="skip: leave bad utterances out and list them in <output>.errors.jsonl")
    parser.add_argument("--shard-index", type=int, help="this task's shard (default: SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-shards", type=int, help="number of shards (default: SLURM_ARRAY_TASK_COUNT)")
    parser.add_argument("--overwrite", action="store_true", help="replace another job's unfinished parts")
    args = parser.parse_args()
    index, count = jobs.shard_from_environment()
    config = TokenizeConfig(args.manifest, args.output, args.model, args.batch_size, args.on_error,
                            shard_index=index if args.shard_index is None else args.shard_index,
                            num_shards=count if args.num_shards is None else args.num_shards,
                            overwrite=args.overwrite)
    try:
        stats = tokenize_manifest(config)
    except (CorpusError, jobs.JobError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
