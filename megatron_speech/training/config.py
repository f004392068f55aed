"""One YAML file describes a training run: model, parallel layout, data mixture, optimizer, schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megatron_speech import config_loader
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
    metrics_file: str | None = None  # rank 0 appends one JSON line a step and one a validation


@dataclass
class CheckpointConfig:
    """Where the run saves and resumes. A run with a checkpoint in ``dir`` always resumes from it."""

    dir: str | None = None
    save_interval: int = 0  # steps; 0 saves only at the end and on an exit signal
    exit_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])


@dataclass
class InitConfig:
    """Starting weights for a run that has no checkpoint yet (at most one of the two)."""

    hf_checkpoint: str | None = None  # a Llama/Qwen2-style text LM; its vocabulary is expanded
    megatron_checkpoint: str | None = None  # a checkpoint root, e.g. from convert_checkpoint.py
    seed: int = 0  # for the new vocabulary rows

    def __post_init__(self) -> None:
        if self.hf_checkpoint and self.megatron_checkpoint:
            raise ValueError("init: give hf_checkpoint or megatron_checkpoint, not both")


@dataclass
class TrainConfig:
    tokenizer: str  # directory written by SpeechTextTokenizer.save
    data: DataConfig
    model: SpeechGPTConfig = field(default_factory=SpeechGPTConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    init: InitConfig = field(default_factory=InitConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return config_loader.build(cls, values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | list[str] | None = None) -> "TrainConfig":
        """The run's YAML (``data: {include: mixture.yaml}`` reads a separate data-mixture file)."""
        return config_loader.load(cls, path, overrides)
