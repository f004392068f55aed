"""Average a run's last checkpoints into one weights-only checkpoint (synthesis and evaluation read it
as any checkpoint root).

    .venv/bin/python tools/average_checkpoints.py --checkpoint work/t2t/checkpoints \
        --tokenizer work/t2t/tokenizer --last 3 --output work/t2t/checkpoints_avg3

Runs in one process on CPU (any TP/PP of the run is resharded to TP=1, PP=1 on load).
"""

import argparse

from megatron_speech.checkpoints.average import average_checkpoints, last_steps
from megatron_speech.checkpoints.megatron import CheckpointError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the run's checkpoint root (holds iter_*)")
    parser.add_argument("--tokenizer", required=True, help="its speech-text tokenizer directory")
    parser.add_argument("--output", required=True, help="a new checkpoint root for the mean")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, help="the newest N complete checkpoints")
    which.add_argument("--steps", type=int, nargs="+", help="these steps")
    args = parser.parse_args()
    try:
        steps = args.steps or last_steps(args.checkpoint, args.last)
        path = average_checkpoints(args.checkpoint, args.tokenizer, args.output, steps)
    except (CheckpointError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {path}: the mean of steps {sorted(steps)}")


if __name__ == "__main__":
    main()
