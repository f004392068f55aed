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
import sys

from megatron_speech import config_loader
from megatron_speech import jobs
from megatron_speech.data.corpus import CorpusError, EmptyCorpusError
from megatron_speech.synthesis.pipeline import SynthesisConfig, finalize, run_shard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="synthesis YAML (keys of SynthesisConfig)")
    parser.add_argument("--shard-index", type=int, help="this task's shard (default: SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-shards", type=int, help="number of shards (default: SLURM_ARRAY_TASK_COUNT)")
    parser.add_argument("--finalize", action="store_true", help="after all shards: stats.json (+ indexed binaries)")
    config_loader.add_overrides_argument(parser)
    args = parser.parse_args()
    try:
        config = config_loader.load(SynthesisConfig, args.config, args.set)
    except config_loader.ConfigError as exc:
        parser.error(str(exc))
    index, count = jobs.shard_from_environment()
    index = index if args.shard_index is None else args.shard_index
    count = count if args.num_shards is None else args.num_shards
    try:
        summary = finalize(config) if args.finalize else run_shard(config, index, count)
    except CorpusError as exc:
        sys.exit(f"error: {exc}\n(set on_error: skip to leave bad records out; finished chunks are kept)")
    except (jobs.JobError, EmptyCorpusError) as exc:
        sys.exit(f"error: {exc}")
    summary.pop("errors", None)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
