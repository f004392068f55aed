"""Likelihood tasks (StoryCloze style): the model picks the candidate continuation it finds most
likely, by the sum of its tokens' log-probabilities (``acc``) or their mean (``acc_per_token``,
which does not favour short candidates).

Requests are (prefix ids, continuation ids). They are scored in batches sorted by length, right-
padded: a causal model's logits at a position never see what comes after it, so padding changes
nothing that is scored. A request longer than the model's context loses the start of its prefix,
and is counted as truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_speech.evaluation.tasks import LikelihoodItem
from megatron_speech.models.gpt import full_logits


@dataclass(frozen=True)
class Score:
    logprob: float  # summed over the continuation's tokens
    tokens: int
    truncated: bool = False

    @property
    def per_token(self) -> float:
        return self.logprob / self.tokens


@torch.no_grad()
def score_requests(model, requests: list[tuple[list[int], list[int]]], batch_size: int, max_length: int,
                   pad: int, progress=None) -> list[Score]:
    """The continuation's log-probability for each request, in order."""
    if not model.post_process or not model.pre_process:
        raise ValueError("evaluation needs the whole model in one pipeline stage (load it at pipeline size 1)")
    order = sorted(range(len(requests)), key=lambda i: -sum(map(len, requests[i])))
    scores: list[Score | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        sequences, truncated = [], []
        for i in batch:
            prefix, continuation = requests[i]
            if not continuation or not prefix:
                raise ValueError(f"request {i}: an empty prefix or continuation cannot be scored")
            if len(continuation) >= max_length:
                raise ValueError(f"request {i}: a continuation of {len(continuation)} tokens does not fit the "
                                 f"model's context of {max_length}")
            sequence = prefix + continuation
            truncated.append(len(sequence) > max_length)
            sequences.append(sequence[-max_length:])
        width = max(map(len, sequences))
        tokens = torch.full((len(batch), width), pad, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, : len(sequence)] = torch.tensor(sequence)
        logits = full_logits(model, tokens.to(next(model.parameters()).device))
        for row, i in enumerate(batch):
            n, k = len(sequences[row]), len(requests[i][1])
            targets = tokens[row, n - k: n].to(logits.device)
            logprobs = logits[row, n - k - 1: n - 1].float().log_softmax(-1)
            total = float(logprobs.gather(-1, targets[:, None]).sum())
            scores[i] = Score(total, k, truncated[row])
        if progress is not None:
            progress.update(len(batch))
    return scores


def pick(scores: list[Score], per_token: bool) -> int:
    """The index of the most likely candidate (the first, on a tie)."""
    values = [s.per_token if per_token else s.logprob for s in scores]
    return max(range(len(values)), key=lambda j: (values[j], -j))


def item_result(item: LikelihoodItem, scores: list[Score]) -> dict:
    chosen, chosen_norm = pick(scores, False), pick(scores, True)
    return {"id": item.id, "answer": item.answer, "chosen": chosen, "chosen_per_token": chosen_norm,
            "logprobs": [round(s.logprob, 4) for s in scores], "tokens": [s.tokens for s in scores],
            "correct": chosen == item.answer, "correct_per_token": chosen_norm == item.answer,
            "truncated": any(s.truncated for s in scores)}


def summarize(results: list[dict]) -> dict:
    n = len(results)
    return {"items": n, "acc": sum(r["correct"] for r in results) / n,
            "acc_per_token": sum(r["correct_per_token"] for r in results) / n,
            "truncated": sum(r["truncated"] for r in results)}
