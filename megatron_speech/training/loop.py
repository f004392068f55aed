"""The pre-training loop: build the parallel model, optimizer and data, then step and log."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_speech import backends, jobs, parallel as par
from megatron_speech.models.gpt import build_model
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.checkpoints import megatron as checkpoint
from megatron_speech.training.config import TrainConfig
from megatron_speech.training.data import build_datasets, microbatches
from megatron_speech.checkpoints.trained import run_metadata
from megatron_speech.training.initial_weights import initialise
from megatron_speech.training.preemption import ExitSignals
from megatron_speech.training.step import StepResult, forward_backward, train_step

logger = logging.getLogger(__name__)


@dataclass
class TrainingState:
    model_chunks: list
    optimizer: object
    scheduler: object
    tokenizer: SpeechTextTokenizer
    loaded: str  # where the weights came from, for the log
    start_step: int = 0  # steps already done (a resumed run)
    held: contextlib.ExitStack | None = None  # the checkpoint folder's lock, for the run's length


def wrap_ddp(model, config: TrainConfig):
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


def build_optimizer(model_chunks: list, config: TrainConfig):
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
    """Model, optimizer and scheduler for this rank, resumed from ``checkpoint.dir`` when it holds a
    checkpoint, else with weights from ``config.init`` (or random).

    Initial weights are loaded before the optimizer exists, so bf16 runs copy them into fp32 master
    weights; a resumed run loads the master weights with the optimizer state.
    """
    par.init_distributed(config.parallel, seed=config.schedule.seed)
    jobs.children_die_with_this_process()  # a killed rank leaves no checkpoint writer behind
    tokenizer = SpeechTextTokenizer.load(config.tokenizer)
    resume, held = None, None
    if config.checkpoint.dir:
        checkpoint.check_optimizer_supported(config.optim.use_distributed_optimizer)
        held = checkpoint.claim_root(config.checkpoint.dir)
        resume = checkpoint.read_info(config.checkpoint.dir)
        if resume is not None:  # refuse a foreign checkpoint before building anything
            checkpoint.check_compatible(resume, run_metadata(config.model, tokenizer))
    model = build_model(config.model, tokenizer.vocab_size, config.parallel)
    loaded = "" if resume else initialise(model, config.init, config.model, tokenizer)
    chunks = [wrap_ddp(model, config)]
    optimizer, scheduler = build_optimizer(chunks, config)
    if resume is None:
        return TrainingState(chunks, optimizer, scheduler, tokenizer, loaded, held=held)
    checkpoint.load(resume, chunks, optimizer, scheduler)
    loaded = f"resumed from {resume.path} (saved with {resume.metadata['layout']})"
    return TrainingState(chunks, optimizer, scheduler, tokenizer, loaded, start_step=resume.step, held=held)


def _save(state: TrainingState, config: TrainConfig, step: int) -> None:
    path = checkpoint.save(config.checkpoint.dir, step, state.model_chunks, state.optimizer, state.scheduler,
                           run_metadata(config.model, state.tokenizer))
    _log_rank0(f"[checkpoint] saved step {step} to {path}")


def _log_rank0(message: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(message, flush=True)


def _record(config: TrainConfig, record: dict) -> None:
    """One JSON line in ``metrics_file``: a training step (``split: train``) or a validation
    (``split: valid``), so a curve of either is read from one file."""
    if config.schedule.metrics_file and torch.distributed.get_rank() == 0:
        Path(config.schedule.metrics_file).parent.mkdir(parents=True, exist_ok=True)
        with open(config.schedule.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")


def _source_names(config: TrainConfig) -> list[str]:
    return [Path(s.prefix).name for s in config.data.sources]


def _losses_by_source(config: TrainConfig, result: StepResult) -> dict:
    names = _source_names(config)
    return {"source_losses": dict(zip(names, result.source_losses)),
            "source_target_losses": dict(zip(names, result.source_target_losses))}


def _format_sources(config: TrainConfig, result: StepResult) -> str:
    """`` | text 0.117 asr 3.610 (text 4.40, speech 3.25) ...``: a source's loss, and its split by
    target where it predicts both text and speech."""
    if len(result.source_sums) < 2:
        return ""
    parts = []
    for name, loss, split in zip(_source_names(config), result.source_losses, result.source_target_losses):
        if loss is None:
            continue
        both = split["text"] is not None and split["speech"] is not None
        parts.append(f"{name} {loss:.3f}" + (f" (text {split['text']:.2f}, speech {split['speech']:.2f})" if both else ""))
    return " | " + " ".join(parts)


@dataclass
class TrainOutcome:
    results: dict[int, StepResult]  # step number (1-based) -> result, for the steps this process ran
    preempted: bool = False  # stopped by an exit signal after saving a checkpoint


def pretrain(config: TrainConfig) -> TrainOutcome:
    """Train (or resume) up to ``config.schedule.steps``; returns the steps run (every rank)."""
    state = setup(config)
    with state.held or contextlib.nullcontext():
        return _train(config, state)


def _train(config: TrainConfig, state: TrainingState) -> TrainOutcome:
    from megatron.core import parallel_state

    start = state.start_step
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
        f"DP {dp_size}) | vocab {state.tokenizer.vocab_size} | train samples {len(train_ds)} | "
        f"weights: {state.loaded} | start step {start}"
    )
    seq, sources = config.data.seq_length, config.data.sources
    outcome = TrainOutcome(results={})
    window_tokens, window_start = 0, time.perf_counter()
    signals = ExitSignals(config.checkpoint.exit_signals) if config.checkpoint.dir else contextlib.nullcontext()
    with signals:
        for step in range(start, s.steps):
            batches = microbatches(train_ds, step, s.global_batch_size, s.micro_batch_size, dp_rank, dp_size,
                                   sources, state.tokenizer)
            result = train_step(state.model_chunks, state.optimizer, state.scheduler, batches, num_microbatches,
                                seq, s.micro_batch_size, num_sources=len(sources))
            done = step + 1
            outcome.results[done] = result
            window_tokens += s.global_batch_size * seq
            lr = state.optimizer.param_groups[0]["lr"]
            _record(config, {"step": done, "split": "train", "loss": result.loss, "lr": lr,
                             "grad_norm": result.grad_norm, **_losses_by_source(config, result)})
            if step == start or done % s.log_interval == 0 or done == s.steps:
                elapsed = time.perf_counter() - window_start
                _log_rank0(
                    f"[train] step {done}/{s.steps} loss {result.loss:.4f} lr {lr:.2e} "
                    f"grad_norm {result.grad_norm:.3f} tokens/s {window_tokens / elapsed:,.0f}"
                    + _format_sources(config, result)
                )
                window_tokens, window_start = 0, time.perf_counter()
            if s.eval_interval and (done % s.eval_interval == 0 or done == s.steps):
                valid = evaluate(state, valid_ds, config, step)
                _log_rank0(f"[valid] step {done} loss {valid.loss:.4f}" + _format_sources(config, valid))
                _record(config, {"step": done, "split": "valid", "loss": valid.loss,
                                 **_losses_by_source(config, valid)})
            if not config.checkpoint.dir:
                continue
            if signals.requested():
                _save(state, config, done)
                received = signals.received.name if signals.received else "a signal on another rank"
                _log_rank0(f"[exit] {received}: stopping after step {done}")
                outcome.preempted = True
                return outcome
            interval = config.checkpoint.save_interval
            if done == s.steps or (interval and done % interval == 0):
                _save(state, config, done)
    return outcome


def evaluate(state: TrainingState, dataset, config: TrainConfig, step: int) -> StepResult:
    """Validation loss (token mean) and per-source losses over ``eval_batches`` global batches."""
    from megatron.core import parallel_state

    s = config.schedule
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    num_microbatches = s.global_batch_size // (s.micro_batch_size * dp_size)
    num_sources = len(config.data.sources)
    total = torch.zeros(2, dtype=torch.float64)
    per_source = torch.zeros(num_sources, 4, dtype=torch.float64)
    for chunk in state.model_chunks:
        chunk.eval()
    with torch.no_grad():
        for i in range(s.eval_batches):
            index = (step // max(s.eval_interval, 1)) * s.eval_batches + i
            batches = microbatches(dataset, index, s.global_batch_size, s.micro_batch_size, dp_rank, dp_size,
                                   config.data.sources, state.tokenizer)
            r = forward_backward(state.model_chunks, batches, num_microbatches, config.data.seq_length,
                                 s.micro_batch_size, forward_only=True, num_sources=num_sources)
            total += torch.tensor([r.loss * r.num_tokens, r.num_tokens], dtype=torch.float64)
            per_source += torch.tensor(r.source_sums, dtype=torch.float64)
    for chunk in state.model_chunks:
        chunk.train()
    loss_sum, tokens = total.tolist()
    return StepResult(loss=loss_sum / max(tokens, 1), num_tokens=int(tokens), source_sums=per_source.tolist())
