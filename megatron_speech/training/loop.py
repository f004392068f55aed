"""The pre-training loop: build the parallel model, optimizer and data, then step and log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from megatron_speech import backends, parallel as par
from megatron_speech.models.gpt import build_model
from megatron_speech.tokenizer import SpeechTextTokenizer
from megatron_speech.training.config import TrainConfig
from megatron_speech.training.data import build_datasets, microbatches
from megatron_speech.training.step import StepResult, forward_backward, train_step

logger = logging.getLogger(__name__)


@dataclass
class TrainingState:
    model_chunks: list
    optimizer: object
    scheduler: object
    tokenizer: SpeechTextTokenizer


def _wrap_ddp(model, config: TrainConfig):
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=config.optim.use_distributed_optimizer,
    )
    tconfig = model.config
    tconfig.calculate_per_token_loss = True
    tconfig.finalize_model_grads_func = finalize_model_grads
    wrapped = DistributedDataParallel(tconfig, ddp_config, model)
    tconfig.no_sync_func = wrapped.no_sync
    return wrapped


def _optimizer(model_chunks: list, config: TrainConfig):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o, model = config.optim, config.model
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=model.params_dtype == "bfloat16",
            fp16=model.params_dtype == "float16",
            params_dtype=model.torch_dtype,
            use_distributed_optimizer=o.use_distributed_optimizer,
        ),
        model_chunks,
    )
    steps = config.schedule.steps
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_steps,
        lr_decay_steps=max(steps, o.warmup_steps + 1),
        lr_decay_style="cosine",
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=steps,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def setup(config: TrainConfig) -> TrainingState:
    par.init_distributed(config.parallel, seed=config.schedule.seed)
    tokenizer = SpeechTextTokenizer.load(config.tokenizer)
    model = build_model(config.model, tokenizer.vocab_size, config.parallel)
    chunks = [_wrap_ddp(model, config)]
    optimizer, scheduler = _optimizer(chunks, config)
    return TrainingState(chunks, optimizer, scheduler, tokenizer)


def _log_rank0(message: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(message, flush=True)


def pretrain(config: TrainConfig) -> list[StepResult]:
    """Train for ``config.schedule.steps`` steps; returns each step's result (every rank)."""
    from megatron.core import parallel_state

    state = setup(config)
    s = config.schedule
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    if s.global_batch_size % (s.micro_batch_size * dp_size):
        raise ValueError(
            f"global_batch_size {s.global_batch_size} is not a multiple of micro_batch_size "
            f"{s.micro_batch_size} x data-parallel size {dp_size}"
        )
    num_microbatches = s.global_batch_size // (s.micro_batch_size * dp_size)
    eval_steps = (s.steps // max(s.eval_interval, 1) + 1) * s.eval_batches
    train_ds, valid_ds = build_datasets(
        config.data, state.tokenizer, s.steps * s.global_batch_size, max(eval_steps, 1) * s.global_batch_size
    )
    _log_rank0(
        f"[setup] backends: {backends.available().describe()} | world {torch.distributed.get_world_size()} "
        f"(TP {config.parallel.tensor_model_parallel_size}, PP {config.parallel.pipeline_model_parallel_size}, "
        f"DP {dp_size}) | vocab {state.tokenizer.vocab_size} | train samples {len(train_ds)}"
    )
    seq = config.data.seq_length
    results: list[StepResult] = []
    window_tokens, window_start = 0, time.perf_counter()
    for step in range(s.steps):
        batches = microbatches(train_ds, step, s.global_batch_size, s.micro_batch_size, dp_rank, dp_size)
        result = train_step(
            state.model_chunks, state.optimizer, state.scheduler, batches, num_microbatches, seq, s.micro_batch_size
        )
        results.append(result)
        window_tokens += s.global_batch_size * seq
        if step == 0 or (step + 1) % s.log_interval == 0 or step + 1 == s.steps:
            elapsed = time.perf_counter() - window_start
            lr = state.optimizer.param_groups[0]["lr"]
            _log_rank0(
                f"[train] step {step + 1}/{s.steps} loss {result.loss:.4f} lr {lr:.2e} "
                f"grad_norm {result.grad_norm:.3f} tokens/s {window_tokens / elapsed:,.0f}"
            )
            window_tokens, window_start = 0, time.perf_counter()
        if s.eval_interval and ((step + 1) % s.eval_interval == 0 or step + 1 == s.steps):
            _log_rank0(f"[valid] step {step + 1} loss {evaluate(state, valid_ds, config, step):.4f}")
    return results


def evaluate(state: TrainingState, dataset, config: TrainConfig, step: int) -> float:
    from megatron.core import parallel_state

    s = config.schedule
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    num_microbatches = s.global_batch_size // (s.micro_batch_size * dp_size)
    loss_sum, tokens = 0.0, 0
    for chunk in state.model_chunks:
        chunk.eval()
    with torch.no_grad():
        for i in range(s.eval_batches):
            index = (step // max(s.eval_interval, 1)) * s.eval_batches + i
            batches = microbatches(dataset, index, s.global_batch_size, s.micro_batch_size, dp_rank, dp_size)
            r = forward_backward(
                state.model_chunks, batches, num_microbatches, config.data.seq_length, s.micro_batch_size,
                forward_only=True,
            )
            loss_sum += r.loss * r.num_tokens
            tokens += r.num_tokens
    for chunk in state.model_chunks:
        chunk.train()
    return loss_sum / max(tokens, 1)
