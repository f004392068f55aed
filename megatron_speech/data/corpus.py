"""Read text corpora (contract 3): jsonl, jsonl.gz or parquet records with a text field.

Every bad record is reported as ``file:line`` (or ``file:row``) so a user can find it in a
terabyte corpus; nothing is silently dropped here (skipping is the caller's decision).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """A record that cannot be used, with the place it came from."""

    def __init__(self, path: Path | str, record: int, reason: str) -> None:
        super().__init__(f"{path}:{record}: {reason}")
        self.path, self.record, self.reason = str(path), record, reason


@dataclass(frozen=True)
class TextRecord:
    path: str
    record: int  # 1-based line (jsonl) or row (parquet) number
    text: str


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            yield number, line


def _jsonl_records(path: Path, field: str) -> Iterator[TextRecord]:
    for number, raw in _jsonl_lines(path):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorpusError(path, number, f"invalid UTF-8 ({exc.reason} at byte {exc.start})") from None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(path, number, f"malformed JSON ({exc.msg})") from None
        yield _text_of(record, field, path, number)


def _parquet_records(path: Path, field: str) -> Iterator[TextRecord]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
    number = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[field]):
        for value in batch.column(0).to_pylist():
            number += 1
            yield _text_of({field: value}, field, path, number)


def _text_of(record: object, field: str, path: Path, number: int) -> TextRecord:
    if not isinstance(record, dict) or field not in record:
        raise CorpusError(path, number, f"missing field {field!r}")
    text = record[field]
    if not isinstance(text, str):
        raise CorpusError(path, number, f"field {field!r} is {type(text).__name__}, not a string")
    if not text.strip():
        raise CorpusError(path, number, "empty document")
    return TextRecord(str(path), number, text)


def read_text_records(path: str | Path, field: str = "text") -> Iterator[TextRecord]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if path.suffix == ".parquet":
        return _parquet_records(path, field)
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return _jsonl_records(path, field)
    raise ValueError(f"{path}: unknown corpus format (expected .jsonl, .jsonl.gz or .parquet)")
