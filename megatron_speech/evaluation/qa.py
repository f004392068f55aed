"""Generative question answering: greedy answers, in text or in speech, scored against the item's
answers by normalised exact match and by "contains an answer" (the paper's spoken-QA metric).

A text answer may use any id of the text vocabulary and ends at end-of-document or at the first id whose text holds
a newline (the line the template leaves for the answer). A spoken answer may use only speech codes
and ends at ``<|end_of_audio|>``; the speech tokenizer's own tokens → text path transcribes it
before it is scored. Answers are generated in batches sorted by prompt length with the decoding loop
synthesis uses (``models.decoding``).
"""

from __future__ import annotations

import re
import string

from megatron_speech.evaluation.tasks import QAItem
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.models.decoding import decode_batch, greedy, speech_ids, text_ids

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(prediction: str, answers: tuple[str, ...]) -> bool:
    return normalize_answer(prediction) in {normalize_answer(a) for a in answers}


def contains_answer(prediction: str, answers: tuple[str, ...]) -> bool:
    """Whether some answer stands in the prediction as whole words."""
    padded = f" {normalize_answer(prediction)} "
    return any(f" {normalize_answer(a)} " in padded for a in answers if normalize_answer(a))


class AnswerGenerator:
    """Greedy answers for prompts from ``prompts.qa_prompt`` (one model replica, any TP size)."""

    def __init__(self, model, tokenizer: SpeechTextTokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_allowed, self.speech_allowed = text_ids(tokenizer), speech_ids(tokenizer)
        self.text_stops = frozenset([tokenizer.eod, *self._newline_ids()])

    def _newline_ids(self) -> list[int]:
        """Text ids whose text holds a newline (once per generator: a pass over the text vocabulary)."""
        decode = self.tokenizer.text_tokenizer.decode
        return [i for i in range(self.tokenizer.text_vocab_size) if "\n" in decode([i], skip_special_tokens=False)]

    def generate(self, prompts: list[list[int]], speech: bool, batch_size: int, limit: int,
                 progress=None) -> list[list[int]]:
        """Answer ids of each prompt: text ids (up to the newline id that stopped it: ``text_of`` cuts
        there, since an id may hold text before its newline), or speech codes."""
        tok = self.tokenizer
        choose = greedy(self.speech_allowed if speech else self.text_allowed)
        stops = frozenset([tok.eoa]) if speech else self.text_stops
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        out: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), batch_size):
            batch = order[start: start + batch_size]
            ids = decode_batch(self.model, [prompts[i] for i in batch], [limit] * len(batch), choose, stops,
                               tok.pad, tok.vocab_size)
            for i, row in zip(batch, ids):
                out[i] = row[:-1] if row and row[-1] in (tok.eod, tok.eoa) else row
            if progress is not None:
                progress.update(len(batch))
        if speech:
            return [[t - tok.audio_offset for t in row] for row in out]
        return out

    def text_of(self, ids: list[int]) -> str:
        return self.tokenizer.text_tokenizer.decode(ids, skip_special_tokens=False).split("\n")[0].strip()


def item_result(item: QAItem, prediction: str, extra: dict | None = None, heard: str | None = None) -> dict:
    """An answer scored; ``heard``: a spoken answer as a judge heard it once decoded (``evaluation.heard``)."""
    result = {"id": item.id, "prediction": prediction, "answers": list(item.answers),
              "exact_match": exact_match(prediction, item.answers),
              "contains": contains_answer(prediction, item.answers), **(extra or {})}
    if heard is not None:
        result.update(heard_prediction=heard, heard_exact_match=exact_match(heard, item.answers),
                      heard_contains=contains_answer(heard, item.answers))
    return result


def summarize(results: list[dict]) -> dict:
    n = len(results)
    summary = {"items": n, "exact_match": sum(r["exact_match"] for r in results) / n,
               "contains": sum(r["contains"] for r in results) / n}
    if results and "heard_prediction" in results[0]:
        summary.update(heard_exact_match=sum(r["heard_exact_match"] for r in results) / n,
                       heard_contains=sum(r["heard_contains"] for r in results) / n)
    return summary
