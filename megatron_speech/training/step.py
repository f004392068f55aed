"""One optimizer step of the speech GPT through Megatron-Core's pipeline schedules.

``get_forward_backward_func`` picks the schedule for the parallel layout (no pipelining, or 1F1B
across stages), so the same step runs TP, PP and DP. Losses are per token: each microbatch returns
its summed loss and token count, and gradients are divided by the global token count in
``finalize_model_grads``. That makes the loss a true token mean across microbatches and
data-parallel ranks, whatever the padding, which is also what keeps different layouts comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist

from megatron_speech.parallel import collective_device

# tokens, labels, loss_mask, position_ids: [micro_batch, seq]; source: [micro_batch]
Batch = dict[str, torch.Tensor]


@dataclass
class StepResult:
    loss: float  # token-mean loss over the global batch (meaningful on every rank)
    num_tokens: int  # tokens that carried loss, over the global batch
    grad_norm: float | None = None
    source_losses: list[float | None] = field(default_factory=list)  # per mixture source; None if absent
    source_tokens: list[int] = field(default_factory=list)


def _loss_func(loss_mask: torch.Tensor, source: torch.Tensor, num_sources: int, output_tensor: torch.Tensor):
    """Summed loss and token count (Megatron divides by the global count later), and per-source sums."""
    mask = loss_mask.float()
    per_token = output_tensor.float() * mask
    loss_sum = per_token.sum()
    num_tokens = mask.sum().to(torch.int)
    by_source = torch.zeros(num_sources, 2, dtype=torch.float64, device=per_token.device)
    index = source.to(per_token.device)
    by_source[:, 0].index_add_(0, index, per_token.detach().sum(dim=1).double())
    by_source[:, 1].index_add_(0, index, mask.sum(dim=1).double())
    report = torch.stack([loss_sum.detach(), num_tokens.float()])
    return loss_sum, num_tokens, {"lm loss": report, "source loss": by_source}


def _forward_step(num_sources: int, data_iterator: Iterator[Batch], model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(
        batch["tokens"],
        batch["position_ids"],
        None,  # causal attention comes from the layer spec's mask type
        labels=batch["labels"],
    )
    source = batch.get("source", torch.zeros(batch["tokens"].shape[0], dtype=torch.long))
    return output, partial(_loss_func, batch["loss_mask"], source, num_sources)


def forward_backward(
    model_chunks: list[torch.nn.Module],
    data_iterator: Iterator[Batch],
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
    num_sources: int = 1,
) -> StepResult:
    """Run all microbatches of one global batch; gradients are left in the model (not applied)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    reports = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, num_sources),
        data_iterator=data_iterator,
        model=model_chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    # Row 0: the whole batch; row 1 + s: source s. Columns: loss sum, token count.
    totals = torch.zeros(1 + num_sources, 2, dtype=torch.float64)
    for report in reports:  # non-empty on the last pipeline stage only
        totals[0] += report["lm loss"].to(torch.float64).cpu()
        totals[1:] += report["source loss"].cpu()
    totals = totals.to(collective_device())
    # Sum over data-parallel replicas, then share the last stage's figure with every stage.
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    last_stage = parallel_state.get_pipeline_model_parallel_last_rank()
    dist.broadcast(totals, src=last_stage, group=parallel_state.get_pipeline_model_parallel_group())
    (loss_sum, num_tokens), *sources = totals.cpu().tolist()
    return StepResult(
        loss=loss_sum / max(num_tokens, 1.0),
        num_tokens=int(num_tokens),
        source_losses=[s / n if n else None for s, n in sources],
        source_tokens=[int(n) for _, n in sources],
    )




def train_step(
    model_chunks: list[torch.nn.Module],
    optimizer,
    scheduler,
    data_iterator: Iterator[Batch],
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    num_sources: int = 1,
) -> StepResult:
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    result = forward_backward(
        model_chunks, data_iterator, num_microbatches, seq_length, micro_batch_size, num_sources=num_sources
    )
    update_ok, grad_norm, _ = optimizer.step()
    if update_ok:
        scheduler.step(increment=1)
    result.grad_norm = float(grad_norm) if grad_norm is not None else None
    return result
