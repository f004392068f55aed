"""Turn a text corpus into speech-text interleaved records with the text-to-token model.

    # one shard of N (default: the Slurm array task, else shard 0 of 1)
    python tools/synthesize_interleaved.py --config examples/synthesize/configs/mini.yaml \
        --shard-index 0 --num-shards 4
    # after every shard: check completeness, sum the statistics, build indexed binaries if configured
    python tools/synthesize_interleaved.py --config examples/synthesize/configs/mini.yaml --finalize

Resumable: rerun the same command after a crash or preemption; finished chunks are skipped.
"""

import argparse
import json
import os
import sys

import yaml

from megatron_speech import overrides
from megatron_speech.data.corpus import CorpusError
from megatron_speech.synthesis.pipeline import SynthesisConfig, finalize, run_shard


def shard_from_environment() -> tuple[int, int]:
    """(index, count) of this Slurm array task, or (0, 1) outside an array."""
    if "SLURM_ARRAY_TASK_ID" not in os.environ:
        return 0, 1
    index = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    return index, int(os.environ["SLURM_ARRAY_TASK_COUNT"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="synthesis YAML (keys of SynthesisConfig)")
    parser.add_argument("--shard-index", type=int, help="this task's shard (default: SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-shards", type=int, help="number of shards (default: SLURM_ARRAY_TASK_COUNT)")
    parser.add_argument("--finalize", action="store_true", help="after all shards: stats.json (+ indexed binaries)")
    overrides.add_argument(parser)
    args = parser.parse_args()
    with open(args.config) as f:
        values = yaml.safe_load(f)
    try:
        config = SynthesisConfig.from_dict(overrides.apply(values, overrides.parse(args.set)))
    except (TypeError, ValueError) as exc:
        parser.error(f"{args.config}: {exc}")
    index, count = shard_from_environment()
    index = index if args.shard_index is None else args.shard_index
    count = count if args.num_shards is None else args.num_shards
    try:
        summary = finalize(config) if args.finalize else run_shard(config, index, count)
    except CorpusError as exc:
        sys.exit(f"error: {exc}\n(set on_error: skip to leave bad records out; finished chunks are kept)")
    summary.pop("errors", None)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
