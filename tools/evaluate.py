"""Evaluate a speech LM on likelihood and QA tasks in S→S, S→T and T→T (one YAML a run).

    .venv/bin/python tools/evaluate.py --config examples/evaluate/mini.yaml
    torchrun --nproc-per-node 2 tools/evaluate.py --config X.yaml --set model.tensor_model_parallel_size=2

Prints a table and writes the JSON report (``output``); with tensor parallelism every rank
computes the same scores and rank 0 reports them.
"""

import argparse

import torch

from megatron_speech import atomic, config_loader
from megatron_speech import parallel as par
from megatron_speech.evaluation.run import EvalConfig, evaluate, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="evaluation YAML (megatron_speech.evaluation.run.EvalConfig)")
    config_loader.add_overrides_argument(parser)
    args = parser.parse_args()
    try:
        config = config_loader.load(EvalConfig, args.config, args.set)
    except config_loader.ConfigError as exc:
        parser.error(str(exc))
    par.init_distributed(config.model.parallel())
    try:
        report = evaluate(config)
        rank = torch.distributed.get_rank()
    finally:
        par.shutdown()
    if rank == 0:
        if config.output:
            atomic.write_json(config.output, report)
            print(f"report: {config.output}")
        print(table(report))


if __name__ == "__main__":
    main()
