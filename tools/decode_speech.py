"""Speech tokens -> audio: the token-to-mel model, then the vocoder (Griffin-Lim, or a HiFi-GAN .nemo
trained on the same mel frames: examples/speech_decoder/conf/hifigan_full.yaml).

    .venv/bin/python tools/decode_speech.py work/speech_tokens/test.jsonl work/decoded/test \
        --model work/speech_decoder/speech_decoder_mini/speech_decoder_mini.nemo [--speaker flite:slt]

Writes <output>/wav/<id>.wav and <output>/manifest.jsonl (a speech manifest: tokenize it, judge it,
listen to it). Batched, resumable (rerun the same command after a crash), shardable (one shard a
Slurm array task), strict about bad token records (file and line named; --on-error skip lists them).
Prints the real-time factor (compute seconds per audio second).
"""

import argparse
import json
import sys

from megatron_speech import jobs
from megatron_speech.data.corpus import CorpusError
from megatron_speech.speech_decoder.decode import DecodeConfig, decode_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokens", help="speech-token jsonl (id, text, speech_tokens)")
    parser.add_argument("output", help="output folder")
    parser.add_argument("--model", required=True, help=".nemo file of the speech decoder")
    parser.add_argument("--speaker", help="a training voice (default: each record's 'speaker', else the first voice)")
    parser.add_argument("--flow-steps", type=int, help="Euler steps of the flow head (default: the model's)")
    parser.add_argument("--vocoder", default="griffin_lim", help="griffin_lim, or a HiFi-GAN .nemo file")
    parser.add_argument("--griffin-lim-iterations", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--on-error", choices=["stop", "skip"], default="stop")
    parser.add_argument("--shard-index", type=int, help="this task's shard (default: SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-shards", type=int, help="number of shards (default: SLURM_ARRAY_TASK_COUNT)")
    parser.add_argument("--overwrite", action="store_true", help="replace another job's unfinished parts")
    args = parser.parse_args()
    index, count = jobs.shard_from_environment()
    config = DecodeConfig(args.tokens, args.output, args.model, args.speaker, vocoder=args.vocoder,
                          griffin_lim_iterations=args.griffin_lim_iterations, flow_steps=args.flow_steps,
                          batch_size=args.batch_size, on_error=args.on_error,
                          shard_index=index if args.shard_index is None else args.shard_index,
                          num_shards=count if args.num_shards is None else args.num_shards, overwrite=args.overwrite)
    try:
        stats = decode_tokens(config)
    except (CorpusError, jobs.JobError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
