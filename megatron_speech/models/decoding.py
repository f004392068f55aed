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


@torch.no_grad()
def beam_search_batch(model, prompts: list[list[int]], max_new: list[int], min_new: list[int], beam: int,
                      allowed: torch.Tensor | None, stop: int, pad: int, vocab_size: int,
                      length_penalty: float = 1.0) -> list[list[int]]:
    """The most likely continuation of each prompt that a beam of ``beam`` finds: up to and including
    ``stop``, or, when no hypothesis ended within ``max_new`` ids, the best unfinished one.

    Why: greedy decoding commits to each id in turn, and a text-to-token model's errors are mostly
    whole words spoken as a similar-sounding word; keeping several hypotheses lets a later id
    overrule an early choice. A finished hypothesis is scored by its summed log-probability divided
    by ``length ** length_penalty`` (0: the plain sum, which favours short outputs); ``stop`` is
    barred before ``min_new`` ids. A prompt's search ends once ``beam`` hypotheses have finished.

    Each prompt owns ``beam`` consecutive rows of one static batch (the same rule as
    ``decode_batch``: right-padded prompts, one position a step); after every step the rows, and
    Megatron-Core's KV cache with them (``swap_key_value_dict``), are reordered to the surviving
    hypotheses. A prompt's result does not depend on the other prompts in the batch."""
    from megatron.core.inference.contexts import StaticInferenceContext

    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if not (model.pre_process and model.post_process):
        raise ValueError("decoding needs the whole model in one pipeline stage (pipeline size 1)")
    device = next(model.parameters()).device
    count, rows = len(prompts), len(prompts) * beam
    lengths = [len(p) for p in prompts]
    total = int(max(n + m for n, m in zip(lengths, max_new)))
    tokens = torch.full((rows, total), pad, dtype=torch.long)
    for p, prompt in enumerate(prompts):
        tokens[p * beam: (p + 1) * beam, : len(prompt)] = torch.tensor(prompt)
    tokens = tokens.to(device)
    positions = torch.arange(total, device=device).expand(rows, total)
    context = StaticInferenceContext(rows, total)
    start = min(lengths)
    logits = _forward(model, tokens[:, :start], positions[:, :start], context, vocab_size)
    mask = allowed.to(device) if allowed is not None else None
    scores = torch.full((count, beam), float("-inf"))
    scores[:, 0] = 0.0  # the beam's rows start identical: expand from the first only
    generated: list[list[int]] = [[] for _ in range(rows)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(count)]
    done = [m <= 0 for m in max_new]
    for t in range(start, total):
        source = torch.arange(rows)
        chosen: dict[int, int] = {}
        for p in range(count):
            if done[p] or t < lengths[p]:
                continue
            rows_p = slice(p * beam, (p + 1) * beam)
            step = len(generated[p * beam])
            logp = logits[rows_p]
            if mask is not None:
                logp = logp.masked_fill(~mask, float("-inf"))
            logp = torch.log_softmax(logp, dim=-1).cpu()
            if step < min_new[p]:
                logp[:, stop] = float("-inf")
            candidates = (scores[p][:, None] + logp).flatten()
            top = torch.topk(candidates, min(2 * beam, candidates.numel()))
            survivors: list[tuple[float, int, int]] = []
            for rank, (score, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                if score == float("-inf"):
                    break
                parent, token = divmod(index, logp.shape[-1])
                if token == stop:
                    if rank < beam:
                        ids = generated[p * beam + parent] + [token]
                        finished[p].append((score / len(ids) ** length_penalty, ids))
                elif len(survivors) < beam:
                    survivors.append((score, parent, token))
            done[p] = len(finished[p]) >= beam or step + 1 >= max_new[p] or not survivors
            if done[p]:
                if not finished[p]:  # nothing ended: the best unfinished hypothesis, without a stop
                    best = survivors[0] if survivors else (0.0, 0, None)
                    ids = generated[p * beam + best[1]] + ([best[2]] if best[2] is not None else [])
                    finished[p].append((float("-inf"), ids))
                continue
            survivors += [(float("-inf"), survivors[0][1], survivors[0][2])] * (beam - len(survivors))
            for k, (score, parent, token) in enumerate(survivors):
                source[p * beam + k] = p * beam + parent
                scores[p, k] = score
                chosen[p * beam + k] = token
        if all(done) or t + 1 == total:
            break
        if not torch.equal(source, torch.arange(rows)):
            index = source.to(device)
            tokens = tokens[index]
            context.swap_key_value_dict(index)
            generated = [list(generated[int(s)]) for s in source]
        for row, token in chosen.items():
            tokens[row, t] = token
            generated[row].append(token)
        logits = _forward(model, tokens[:, t: t + 1], positions[:, t: t + 1], context, vocab_size)
    return [max(f, key=lambda item: item[0])[1] if f else [] for f in finished]
