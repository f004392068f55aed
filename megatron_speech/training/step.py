"""One optimizer step of the speech GPT through Megatron-Core's pipeline schedules.

``get_forward_backward_func`` picks the schedule for the parallel layout (no pipelining, or 1F1B
across stages), so the same step runs TP, PP and DP. Losses are per token: each microbatch returns
its summed loss and token count, and gradients are divided by the global token count in
``finalize_model_grads``. That makes the loss a true token mean across microbatches and
data-parallel ranks, whatever the padding, which is also what keeps different layouts comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

Batch = dict[str, torch.Tensor]  # tokens, labels, loss_mask, position_ids: [micro_batch, seq]


@dataclass
class StepResult:
    loss: float  # token-mean loss over the global batch (meaningful on every rank)
    num_tokens: int  # tokens that carried loss, over the global batch
    grad_norm: float | None = None


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Summed loss and token count; Megatron divides by the global count later."""
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(output_tensor.reshape(-1).float() * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.float()])
    return loss_sum, num_tokens, {"lm loss": report}


def _forward_step(data_iterator: Iterator[Batch], model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(
        batch["tokens"],
        batch["position_ids"],
        None,  # causal attention comes from the layer spec's mask type
        labels=batch["labels"],
    )
    return output, partial(_loss_func, batch["loss_mask"])


def forward_backward(
    model_chunks: list[torch.nn.Module],
    data_iterator: Iterator[Batch],
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> StepResult:
    """Run all microbatches of one global batch; gradients are left in the model (not applied)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    reports = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=data_iterator,
        model=model_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    totals = torch.zeros(2, dtype=torch.float64)
    for report in reports:  # non-empty on the last pipeline stage only
        totals += report["lm loss"].to(torch.float64).cpu()
    # Sum over data-parallel replicas, then share the last stage's figure with every stage.
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    last_stage = parallel_state.get_pipeline_model_parallel_last_rank()
    dist.broadcast(totals, src=last_stage, group=parallel_state.get_pipeline_model_parallel_group())
    loss_sum, num_tokens = totals.tolist()
    return StepResult(loss=loss_sum / max(num_tokens, 1.0), num_tokens=int(num_tokens))


def train_step(
    model_chunks: list[torch.nn.Module],
    optimizer,
    scheduler,
    data_iterator: Iterator[Batch],
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
) -> StepResult:
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    result = forward_backward(model_chunks, data_iterator, num_microbatches, seq_length, micro_batch_size)
    update_ok, grad_norm, _ = optimizer.step()
    if update_ok:
        scheduler.step(increment=1)
    result.grad_norm = float(grad_norm) if grad_norm is not None else None
    return result
