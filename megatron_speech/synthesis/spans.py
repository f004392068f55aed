"""Which words of a document become speech: word-level spans covering a fraction η of its words.

The sampler is a pure function of (text, document id, config). Its random generator is seeded from
the config's seed and a hash of the document id, so a document gets the same spans whichever shard,
worker or batch it lands in, and a rerun of any shard reproduces its output exactly.

Per document of n words: span lengths are drawn from the configured distribution until they cover
η·n words in expectation (the last, overshooting draw is kept with the probability that makes the
expectation exact, so the corpus-wide fraction is η even for short documents, and span lengths keep
their distribution); the spans are shuffled and placed with at least one text word between
neighbours (otherwise two spans would merge into one), the other text words spread uniformly over
the gaps.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

DISTRIBUTIONS = ("poisson", "geometric", "fixed")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class SpanConfig:
    ratio: float = 0.3  # η: the fraction of words turned into speech (the paper tried 0.2-0.4)
    mean_words: float = 10.0  # mean span length in words
    distribution: str = "poisson"  # poisson | geometric | fixed
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"span ratio must be in [0, 1], got {self.ratio}")
        if self.mean_words < 1:
            raise ValueError(f"mean span length must be at least 1 word, got {self.mean_words}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown span distribution {self.distribution!r}; expected one of {DISTRIBUTIONS}")


@dataclass(frozen=True)
class Piece:
    """A slice of the document: kept as text, or to be spoken. Pieces concatenate to the document."""

    text: str
    speech: bool


def word_offsets(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the whitespace-separated words."""
    return [m.span() for m in _WORD.finditer(text)]


def document_rng(seed: int, document_id: str) -> np.random.Generator:
    digest = hashlib.sha256(document_id.encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *map(int, words)])))


def _span_length(rng: np.random.Generator, config: SpanConfig) -> int:
    if config.distribution == "poisson":
        return max(1, int(rng.poisson(config.mean_words)))
    if config.distribution == "geometric":
        return int(rng.geometric(1.0 / config.mean_words))
    return max(1, round(config.mean_words))


def _span_lengths(rng: np.random.Generator, words: int, config: SpanConfig) -> list[int]:
    """Span lengths covering ``ratio * words`` words in expectation, each drawn whole.

    Lengths are drawn while they fit the budget; the first that overshoots is kept with the
    probability that makes the expected total exactly the budget. Truncating it instead would skew
    the length distribution towards short spans.
    """
    budget = config.ratio * words
    lengths: list[int] = []
    total = 0
    while total < budget:
        length = min(_span_length(rng, config), words)
        if total + length <= budget or rng.random() < (budget - total) / length:
            lengths.append(length)
        if total + length > budget:
            break
        total += length
    while sum(lengths) > words:  # more than the document: shorten the longest
        lengths[int(np.argmax(lengths))] -= sum(lengths) - words
    rng.shuffle(lengths)
    return [n for n in lengths if n > 0]


def _gaps(rng: np.random.Generator, text_words: int, spans: int) -> list[int]:
    """Text words before, between and after ``spans`` spans: interior gaps at least one word, the
    remainder split uniformly at random (stars and bars)."""
    free = text_words - (spans - 1)
    bars = np.sort(rng.choice(free + spans, size=spans, replace=False))
    parts = np.diff(np.concatenate([[-1], bars, [free + spans]])) - 1
    return [int(p) + (1 if 0 < i < spans else 0) for i, p in enumerate(parts)]


def sample_spans(text: str, document_id: str, config: SpanConfig) -> list[tuple[int, int]]:
    """Spans as [first word, last word + 1) index pairs, sorted and non-overlapping."""
    n = len(word_offsets(text))
    rng = document_rng(config.seed, document_id)
    lengths = _span_lengths(rng, n, config)
    if not lengths:
        return []
    while len(lengths) - 1 > n - sum(lengths):  # too few text words to separate them all: merge
        last = lengths.pop()
        lengths[-1] += last
    gaps = _gaps(rng, n - sum(lengths), len(lengths))
    spans, position = [], 0
    for gap, length in zip(gaps, lengths):
        position += gap
        spans.append((position, position + length))
        position += length
    return spans


def split_document(text: str, spans: list[tuple[int, int]]) -> list[Piece]:
    """The document as alternating pieces; a speech piece is exactly its words, the whitespace
    around it stays in the neighbouring text pieces (``Today is ``, ``sunny``, `` today``)."""
    offsets = word_offsets(text)
    pieces, cursor = [], 0
    for first, last in spans:
        start, end = offsets[first][0], offsets[last - 1][1]
        if start > cursor:
            pieces.append(Piece(text[cursor:start], speech=False))
        pieces.append(Piece(text[start:end], speech=True))
        cursor = end
    if cursor < len(text):
        pieces.append(Piece(text[cursor:], speech=False))
    return pieces
