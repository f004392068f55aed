"""Pre-train the speech GPT with Megatron-Core. Launch with torchrun or srun (one process a rank).

    torchrun --nproc-per-node 2 tools/pretrain.py --config examples/tiny/pretrain.yaml \
        --set schedule.steps=50

Exits with 75 when an exit signal (SIGTERM, SIGUSR1) stopped it after saving a checkpoint.
"""

import argparse
import sys

from megatron_speech import config_loader
from megatron_speech.parallel import shutdown
from megatron_speech.training.config import TrainConfig
from megatron_speech.training.loop import pretrain
from megatron_speech.training.preemption import PREEMPTED_EXIT_CODE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training YAML")
    config_loader.add_overrides_argument(parser)
    args = parser.parse_args()
    try:
        train_config = TrainConfig.from_yaml(args.config, args.set)
    except config_loader.ConfigError as exc:
        parser.error(str(exc))
    outcome = pretrain(train_config)
    shutdown()
    if outcome.preempted:  # checkpoint saved; the launcher requeues the job
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
