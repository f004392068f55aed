"""Static-batch, KV-cached decoding on the project's Megatron model: the one decoding loop that
synthesis (speech spans) and evaluation (answers, in text or speech) share.

Decoding uses Megatron-Core's own static-batch KV cache (``StaticInferenceContext``), so a GPU run
uses the same attention kernels as training. Batching rule (Megatron's static engine does the
same): prompts are right-padded, the batch is prefilled up to its shortest prompt, and from there
one position a step is fed for every row; a row still inside its prompt takes its prompt token
instead of the chosen one. No padding masks are needed, and a row's tokens never depend on the
other rows. With tensor parallelism every rank sees the gathered logits, so every rank chooses the
same tokens (greedy; sampled choices need the same generators on every rank).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch

# Chooses the next token of each row from next-token logits [batch, vocab]; rows that are not
# active (finished, or still inside their prompt) may get anything (they are ignored).
Chooser = Callable[[torch.Tensor, list[bool]], list[int]]


def speech_ids(tokenizer) -> torch.Tensor:
    """Mask of the ids a speech continuation may use: the speech codes and ``<|end_of_audio|>``."""
    ids = torch.arange(tokenizer.vocab_size)
    allowed = (ids >= tokenizer.audio_offset) & (ids < tokenizer.audio_offset + tokenizer.codebook_size)
    allowed[tokenizer.eoa] = True
    return allowed


def text_ids(tokenizer) -> torch.Tensor:
    """Mask of the ids a text continuation may use: the text vocabulary and end-of-document."""
    allowed = torch.arange(tokenizer.vocab_size) < tokenizer.text_vocab_size
    allowed[tokenizer.eod] = True
    return allowed


def greedy(allowed: torch.Tensor | None = None) -> Chooser:
    """Arg-max over the ids where ``allowed`` (a bool mask over the vocabulary) is true, or all."""

    def choose(logits: torch.Tensor, active: list[bool]) -> list[int]:
        if allowed is not None:
            logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
        return logits.argmax(dim=-1).tolist()

    return choose


@torch.no_grad()
def decode_batch(model, prompts: list[list[int]], max_new: list[int], choose: Chooser, stop: Collection[int],
                 pad: int, vocab_size: int) -> list[list[int]]:
    """Generated ids of each prompt: up to and including the first id in ``stop``, or ``max_new``
    ids when none came. ``model`` is the whole model in this process's tensor-parallel group
    (pipeline size 1)."""
    from megatron.core.inference.contexts import StaticInferenceContext

    if not (model.pre_process and model.post_process):
        raise ValueError("decoding needs the whole model in one pipeline stage (pipeline size 1)")
    device = next(model.parameters()).device
    batch = len(prompts)
    lengths = [len(p) for p in prompts]
    total = int(max(n + m for n, m in zip(lengths, max_new)))
    tokens = torch.full((batch, total), pad, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt)
    tokens = tokens.to(device)
    positions = torch.arange(total, device=device).expand(batch, total)
    context = StaticInferenceContext(batch, total)
    start = min(lengths)
    logits = _forward(model, tokens[:, :start], positions[:, :start], context, vocab_size)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = [m <= 0 for m in max_new]
    for t in range(start, total):
        active = [not done[row] and t >= lengths[row] for row in range(batch)]
        chosen = choose(logits, active)
        for row in range(batch):
            if not active[row]:
                continue
            token = int(chosen[row])
            tokens[row, t] = token
            out[row].append(token)
            done[row] = token in stop or len(out[row]) >= max_new[row]
        if all(done) or t + 1 == total:
            break
        logits = _forward(model, tokens[:, t: t + 1], positions[:, t: t + 1], context, vocab_size)
    return out


def _forward(model, tokens: torch.Tensor, positions: torch.Tensor, context, vocab_size: int) -> torch.Tensor:
    """Next-token logits [batch, vocab] after ``tokens``; advances the KV cache."""
    logits = model(tokens, positions, None, inference_context=context, runtime_gather_output=True)
    context.sequence_len_offset += tokens.shape[1]
    return logits[:, -1, :vocab_size].float()
