"""Task files (contract 9): jsonl, one item a line, read with file:line errors.

    likelihood  {"id", "context": str, "candidates": [str, ...], "answer": int}
    qa          {"id", "question": str, "answers": [str, ...]}

A spoken version (``tools/build_spoken_task.py``) adds, for each field, its speech tokens
(``<field>_speech_tokens``: codebook indices, a list per string, a list of lists per list of
strings) and the audio they came from (``<field>_audio``: paths, the same shape). The speech
tokenizer that made the tokens is recorded beside the file as for speech-token jsonl
(contract 2: ``task.jsonl.speech_tokenizer.json``), so a mismatched tokenizer is caught.

The kind of a file is read off its first record (``candidates`` → likelihood, ``question`` → qa).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_speech.data.corpus import CorpusError, check_unicode, read_records

LIKELIHOOD, QA = "likelihood", "qa"
KINDS = (LIKELIHOOD, QA)
FIELDS = {LIKELIHOOD: ("context", "candidates"), QA: ("question", "answers")}
SPEECH_SUFFIX, AUDIO_SUFFIX = "_speech_tokens", "_audio"

Codes = tuple[int, ...]


@dataclass(frozen=True)
class LikelihoodItem:
    id: str
    context: str
    candidates: tuple[str, ...]
    answer: int  # index into candidates
    context_speech: Codes | None = None
    candidates_speech: tuple[Codes, ...] | None = None


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: tuple[str, ...]  # any of them is right
    question_speech: Codes | None = None
    answers_speech: tuple[Codes, ...] | None = None


Item = LikelihoodItem | QAItem


def kind_of(record: object) -> str | None:
    if isinstance(record, dict):
        if "candidates" in record:
            return LIKELIHOOD
        if "question" in record:
            return QA
    return None


def read_task(path: str | Path, codebook_size: int | None = None) -> tuple[str, list[Item]]:
    """(kind, items) of a task file; a bad record raises ``CorpusError`` naming file and line.
    With ``codebook_size``, speech tokens outside ``[0, codebook_size)`` are bad records too."""
    path = Path(path)
    kind, items, seen = None, [], {}
    for number, record in read_records(path):
        if kind is None:
            kind = kind_of(record)
            if kind is None:
                raise CorpusError(path, number, "neither a likelihood item (context, candidates, answer) "
                                                "nor a QA item (question, answers)")
        item = _parse(kind, record, codebook_size, path, number)
        if item.id in seen:
            raise CorpusError(path, number, f"id {item.id!r} already used on line {seen[item.id]}")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise CorpusError(path, 0, "no items")
    return kind, items


def _parse(kind: str, record: object, codebook_size: int | None, path: Path, number: int) -> Item:
    if not isinstance(record, dict):
        raise CorpusError(path, number, f"record is {type(record).__name__}, not an object")
    one, many = FIELDS[kind]
    item_id = record.get("id", number)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise CorpusError(path, number, "field 'id' must be a string or an integer")
    text = _string(record, one, path, number)
    texts = _strings(record, many, path, number, minimum=2 if kind == LIKELIHOOD else 1)
    speech = _codes(record.get(one + SPEECH_SUFFIX), codebook_size, path, number, one + SPEECH_SUFFIX)
    speeches = _code_lists(record.get(many + SPEECH_SUFFIX), len(texts), codebook_size, path, number, many + SPEECH_SUFFIX)
    if kind == QA:
        return QAItem(str(item_id), text, texts, speech, speeches)
    answer = record.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(texts):
        raise CorpusError(path, number, f"field 'answer' must be an index into the {len(texts)} candidates")
    return LikelihoodItem(str(item_id), text, texts, answer, speech, speeches)


def _string(record: dict, field: str, path: Path, number: int) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise CorpusError(path, number, f"field {field!r} must be a non-empty string")
    return check_unicode(value, path, number, f"field {field!r}")


def _strings(record: dict, field: str, path: Path, number: int, minimum: int) -> tuple[str, ...]:
    values = record.get(field)
    if not isinstance(values, list) or len(values) < minimum:
        raise CorpusError(path, number, f"field {field!r} must be a list of at least {minimum} strings")
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise CorpusError(path, number, f"{field}[{i}] must be a non-empty string")
        check_unicode(value, path, number, f"{field}[{i}]")
    return tuple(values)


def _codes(value: object, codebook_size: int | None, path: Path, number: int, where: str) -> Codes | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise CorpusError(path, number, f"{where} must be a non-empty list of integers")
    if codebook_size is not None:
        bad = next((c for c in value if not 0 <= c < codebook_size), None)
        if bad is not None:
            raise CorpusError(path, number, f"speech token {bad} in {where} is outside the codebook [0, {codebook_size})")
    return tuple(value)


def _code_lists(value: object, count: int, codebook_size: int | None, path: Path, number: int,
                where: str) -> tuple[Codes, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count:
        raise CorpusError(path, number, f"{where} must hold one list of speech tokens for each of the {count} strings")
    return tuple(_codes(v, codebook_size, path, number, f"{where}[{i}]") for i, v in enumerate(value))
