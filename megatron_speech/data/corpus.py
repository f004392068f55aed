"""Read corpus records: jsonl, jsonl.gz or parquet, whole files or line-aligned byte ranges.

Every bad record is reported as ``file:line`` (parquet: ``file:row``) so a user can find it in a
terabyte corpus; nothing is silently dropped here (skipping is the caller's decision).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """A record that cannot be used, with the place it came from."""

    def __init__(self, path: Path | str, record: int, reason: str) -> None:
        super().__init__(f"{path}:{record}: {reason}")
        self.path, self.record, self.reason = str(path), record, reason


class EmptyCorpusError(ValueError):
    """Inputs that hold no usable document: nothing is written (an empty dataset cannot be read)."""


UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class TextRecord:
    path: str
    record: int  # 1-based line (jsonl) or row (parquet) number
    text: str


def is_splittable(path: Path) -> bool:
    """Plain jsonl can be read from any line-aligned byte offset; gz and parquet only whole."""
    return path.name.endswith((".jsonl", ".json"))


def check_format(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if not (path.suffix == ".parquet" or path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))):
        raise ValueError(f"{path}: unknown corpus format (expected .jsonl, .jsonl.gz or .parquet)")


def _line_number(path: Path, offset: int) -> int:
    """1-based number of the line starting at ``offset`` (counted only when an error needs it)."""
    count = 1
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 20))
            count += block.count(b"\n")
            offset -= len(block)
    return count


def _jsonl_lines(path: Path, start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for lines that begin in [start, end)."""
    if not is_splittable(path):
        yield from _gzip_lines(path)
        return
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line that straddles `start` belongs to the previous range
        number = None
        while end is None or f.tell() < end:
            position = f.tell()
            line = f.readline()
            if not line:
                return
            if number is None:
                number = _line_number(path, position) if position else 1
            yield number, line[len(UTF8_BOM):] if position == 0 and line.startswith(UTF8_BOM) else line
            number += 1


def _gzip_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Lines of a gzip file; a truncated or corrupt one is a ``CorpusError`` at the first line it
    could not read, after every line it could."""
    number = 0
    try:
        with gzip.open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                yield number, line[len(UTF8_BOM):] if number == 1 and line.startswith(UTF8_BOM) else line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorpusError(path, number + 1, f"truncated or corrupt gzip data ({type(exc).__name__}: {exc}); "
                                            f"the records after line {number} cannot be read") from None


def _decode(raw: bytes, path: Path, number: int) -> object:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(path, number, f"invalid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(path, number, f"malformed JSON ({exc.msg})") from None


def read_records(
    path: str | Path, start: int = 0, end: int | None = None, strict: bool = True
) -> Iterator[tuple[int, object]]:
    """(record number, parsed record) pairs. With ``strict=False`` an unreadable record is yielded
    as its ``CorpusError`` instead of raised, so a caller can skip it and go on."""
    path = Path(path)
    check_format(path)
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    lines = _jsonl_lines(path, start, end)
    while True:
        try:
            number, raw = next(lines)
        except StopIteration:
            return
        except CorpusError as exc:  # the file itself is unreadable from here on
            if strict:
                raise
            yield exc.record, exc
            return
        if not raw.strip():
            continue
        try:
            yield number, _decode(raw, path, number)
        except CorpusError as exc:
            if strict:
                raise
            yield number, exc


def _parquet_records(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
    number = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            number += 1
            yield number, row


def text_field(record: object, field: str, path: Path | str, number: int) -> str:
    if not isinstance(record, dict) or field not in record:
        raise CorpusError(path, number, f"missing field {field!r}")
    text = record[field]
    if not isinstance(text, str):
        raise CorpusError(path, number, f"field {field!r} is {type(text).__name__}, not a string")
    if not text.strip():
        raise CorpusError(path, number, "empty document")
    return check_unicode(text, path, number, f"field {field!r}")


def check_unicode(text: str, path: Path | str, number: int, where: str) -> str:
    """Valid JSON may still hold text no tokenizer can encode: a lone surrogate (``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CorpusError(path, number, f"{where} is not valid Unicode (lone surrogate {text[exc.start]!r} at "
                                        f"character {exc.start})") from None
    return text


def read_text_records(path: str | Path, field: str = "text") -> Iterator[TextRecord]:
    path = Path(path)
    check_format(path)
    return (TextRecord(str(path), n, text_field(r, field, path, n)) for n, r in read_records(path))
