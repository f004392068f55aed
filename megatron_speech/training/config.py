"""One YAML file describes a training run: model, parallel layout, data mixture, optimizer, schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from megatron_speech.models.config import SpeechGPTConfig
from megatron_speech.parallel import ParallelConfig
from megatron_speech.training.data import DataConfig


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 10
    use_distributed_optimizer: bool = False


@dataclass
class ScheduleConfig:
    steps: int = 100
    micro_batch_size: int = 4
    global_batch_size: int = 8
    log_interval: int = 10
    eval_interval: int = 50
    eval_batches: int = 2
    seed: int = 1234


@dataclass
class TrainConfig:
    tokenizer: str  # directory written by SpeechTextTokenizer.save
    data: DataConfig
    model: SpeechGPTConfig = field(default_factory=SpeechGPTConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return cls(
            tokenizer=values["tokenizer"],
            data=DataConfig.from_dict(values["data"]),
            model=SpeechGPTConfig.from_dict(values.get("model", {})),
            parallel=ParallelConfig(**values.get("parallel", {})),
            optim=OptimConfig(**values.get("optim", {})),
            schedule=ScheduleConfig(**values.get("schedule", {})),
        )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        with open(path) as f:
            values = yaml.safe_load(f)
        for dotted, value in (overrides or {}).items():
            node = values
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return cls.from_dict(values)
