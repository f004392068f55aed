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

# tokens, labels, loss_mask, position_ids: [micro_batch, seq]; source: [micro_batch];
# speech_target (optional): [micro_batch, seq], True where the target is speech
Batch = dict[str, torch.Tensor]


@dataclass
class StepResult:
    loss: float  # token-mean loss over the global batch (meaningful on every rank)
    num_tokens: int  # tokens that carried loss, over the global batch
    grad_norm: float | None = None
    # per mixture source: [text loss sum, text tokens, speech loss sum, speech tokens]
    source_sums: list[list[float]] = field(default_factory=list)

    @property
    def source_tokens(self) -> list[int]:
        return [int(row[1] + row[3]) for row in self.source_sums]

    @property
    def source_losses(self) -> list[float | None]:
        """Token-mean loss per source; None where a source had no tokens in the batch."""
        return [_mean(row[0] + row[2], row[1] + row[3]) for row in self.source_sums]

    @property
    def source_target_losses(self) -> list[dict[str, float | None]]:
        """Per source, the loss on text targets and on speech targets apart. Why: an ASR sample's
        loss is mostly its speech codes, so only the transcript's part says whether the model hears
        the words (and a TTS sample's speech part whether it speaks them)."""
        return [{"text": _mean(row[0], row[1]), "speech": _mean(row[2], row[3])} for row in self.source_sums]


def _mean(total: float, count: float) -> float | None:
    return total / count if count else None


def _loss_func(loss_mask: torch.Tensor, source: torch.Tensor, speech_target: torch.Tensor | None, num_sources: int,
               output_tensor: torch.Tensor):
    """Summed loss and token count (Megatron divides by the global count later), and per-source sums
    split by target (text, speech)."""
    mask = loss_mask.float()
    per_token = output_tensor.float() * mask
    loss_sum = per_token.sum()
    num_tokens = mask.sum().to(torch.int)
    speech = torch.zeros_like(mask) if speech_target is None else speech_target.to(mask.device).float()
    by_source = torch.zeros(num_sources, 4, dtype=torch.float64, device=per_token.device)
    index = source.to(per_token.device)
    for column, part in enumerate((1.0 - speech, speech)):
        by_source[:, 2 * column].index_add_(0, index, (per_token.detach() * part).sum(dim=1).double())
        by_source[:, 2 * column + 1].index_add_(0, index, (mask * part).sum(dim=1).double())
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
    return output, partial(_loss_func, batch["loss_mask"], source, batch.get("speech_target"), num_sources)


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
    # Row 0: the whole batch (loss sum, token count); row 1 + s: source s (text loss sum, text tokens,
    # speech loss sum, speech tokens).
    totals = torch.zeros(1 + num_sources, 4, dtype=torch.float64)
    for report in reports:  # non-empty on the last pipeline stage only
        totals[0, :2] += report["lm loss"].to(torch.float64).cpu()
        totals[1:] += report["source loss"].cpu()
    totals = totals.to(collective_device())
    # Sum over data-parallel replicas, then share the last stage's figure with every stage.
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    last_stage = parallel_state.get_pipeline_model_parallel_last_rank()
    dist.broadcast(totals, src=last_stage, group=parallel_state.get_pipeline_model_parallel_group())
    (loss_sum, num_tokens, _, _), *sources = totals.cpu().tolist()
    return StepResult(loss=loss_sum / max(num_tokens, 1.0), num_tokens=int(num_tokens), source_sums=sources)


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
