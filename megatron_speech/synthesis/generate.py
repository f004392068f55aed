"""Text → speech tokens with the text-to-token model: batched, KV-cached, checked, reproducible.

The prompt is the TTS sample layout up to the audio (``<eod> text <|begin_of_audio|>``; the leading
end-of-document is what precedes every document in a packed training sequence). Decoding is
``models.decoding``'s static-batch loop on Megatron-Core's KV cache (a row's tokens never depend
on the other rows). Spans are sorted by prompt length into
batches, so little work is spent on prompts of unequal length.

Every span has its own random generator (seeded by the caller), so sampled output is independent of
which spans share its batch. A generated span is accepted only when it ends with
``<|end_of_audio|>``, holds audio ids only, and has a length plausible for its text; otherwise it is
re-sampled (sampling only: greedy and beam search would repeat themselves) and finally left as text by
the caller. Beam search (``strategy: beam``) keeps ``beam_size`` hypotheses a span
(``models.decoding.beam_search_batch``) and returns the most likely one that ends within the span's
length bounds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from megatron_speech.data.layouts import voice_text
from megatron_speech.models.decoding import beam_search_batch, decode_batch, speech_ids
from megatron_speech.speech.text import normalize_text
from megatron_speech.lm_tokenizer import SpeechTextTokenizer

STRATEGIES = ("greedy", "sample", "beam")
BEAM_FIELDS = ("beam_size", "length_penalty")  # used by strategy "beam" only


@dataclass(frozen=True)
class GenerationConfig:
    batch_size: int = 32  # spans decoded together
    strategy: str = "greedy"  # greedy | sample | beam
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    beam_size: int = 4  # strategy beam: hypotheses kept a span (a batch holds batch_size * beam_size rows)
    length_penalty: float = 1.0  # strategy beam: a finished span's score is log p / length ** this
    audio_only: bool = True  # decode only audio ids and <|end_of_audio|> (others get -inf)
    # Length bounds from the span text: speech at 12.5 Hz runs at about 0.9 tokens a character.
    max_tokens_per_char: float = 2.0
    min_tokens_per_char: float = 0.2
    extra_tokens: int = 8  # added to the maximum, for very short spans
    retries: int = 2  # extra attempts for a rejected span (sampling only)
    ignore_end_of_audio: bool = False  # benchmarks: every span runs to its maximum length
    # The text the model was trained on: the speech corpus's transcripts are normalized (lower case,
    # letters and apostrophes), so span texts are normalized the same way before they are spoken.
    normalize_text: bool = True
    # The voice to speak, for a model trained on voice-named TTS pairs (preprocess --voice-field,
    # ``layouts.voice_text``): one of its training voices, e.g. "espeak:en-gb". None: a model
    # trained without voices.
    voice: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.batch_size < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need batch_size >= 1, temperature > 0, 0 < top_p <= 1, top_k >= 0")
        if self.beam_size < 1 or self.length_penalty < 0:
            raise ValueError("need beam_size >= 1 and length_penalty >= 0")

    def signature(self) -> dict:
        """The settings a job's output depends on: the beam settings only under beam search, so
        adding them left every earlier greedy or sampled job's fingerprint as it was."""
        values = asdict(self)
        return values if self.strategy == "beam" else {k: v for k, v in values.items() if k not in BEAM_FIELDS}

    def length_bounds(self, text: str) -> tuple[int, int]:
        """(minimum, maximum) audio tokens accepted for ``text``."""
        n = len(text)
        return math.floor(self.min_tokens_per_char * n), math.ceil(self.max_tokens_per_char * n) + self.extra_tokens


@dataclass(frozen=True)
class SpanResult:
    codes: tuple[int, ...] | None  # codebook indices; None: rejected on every attempt
    attempts: int
    reason: str | None = None  # why the last attempt was rejected


class SpanGenerator:
    """Generates speech tokens for many texts with one model replica (TP=1, PP=1): synthesis scales
    by running many replicas over disjoint shards, not by splitting the model."""

    def __init__(self, model, tokenizer: SpeechTextTokenizer, config: GenerationConfig) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.device = next(model.parameters()).device
        self.allowed = speech_ids(tokenizer).to(self.device)

    def spoken_text(self, text: str) -> str:
        return normalize_text(text) if self.config.normalize_text else text

    def prompt(self, text: str, voice: str | None = None) -> list[int]:
        """``<eod> [voice] text <|begin_of_audio|>`` for the text as the model reads it (``spoken_text``)."""
        tok = self.tokenizer
        return [tok.eod, *tok.tokenize(voice_text(voice, text)), tok.boa]

    # ---- the whole job: batches, checks, retries ----------------------------------------------

    def generate(self, texts: list[str], seeds: list[int], voices: list[str] | None = None) -> list[SpanResult]:
        """One result per text, in order. ``seeds`` seed each span's sampler (unused when greedy);
        ``voices``, each span's voice (default: the config's ``voice`` for every span)."""
        spoken = [self.spoken_text(t) for t in texts]
        voices = voices if voices is not None else [self.config.voice] * len(texts)
        prompts = [self.prompt(t, v) for t, v in zip(spoken, voices)]
        bounds = [self.config.length_bounds(t) for t in spoken]
        results = [SpanResult(None, 0, "nothing to speak")] * len(texts)
        pending = [i for i, t in enumerate(spoken) if t.strip()]
        attempts = 1 + (self.config.retries if self.config.strategy == "sample" else 0)
        for attempt in range(attempts):
            pending.sort(key=lambda i: (len(prompts[i]), bounds[i][1], i))
            still = []
            for b in range(0, len(pending), self.config.batch_size):
                batch = pending[b: b + self.config.batch_size]
                outputs = self.decode([prompts[i] for i in batch], [bounds[i][1] + 1 for i in batch],
                                      [(seeds[i] + attempt * 0x9E3779B97F4A7C15) % (1 << 63) for i in batch],
                                      [max(bounds[i][0], 1) for i in batch])
                for i, ids in zip(batch, outputs):
                    reason = self.check(ids, *bounds[i])
                    if reason is None:
                        results[i] = SpanResult(tuple(t - self.tokenizer.audio_offset for t in ids[:-1]), attempt + 1)
                    else:
                        results[i] = SpanResult(None, attempt + 1, reason)
                        still.append(i)
            pending = still
            if not pending:
                break
        return results

    def check(self, ids: list[int], min_len: int, max_len: int) -> str | None:
        """Why the generated ids are not a well-formed span, or None."""
        tok = self.tokenizer
        if not ids or ids[-1] != tok.eoa:
            return f"no <|end_of_audio|> within {max_len} tokens"
        audio = ids[:-1]
        if not all(tok.is_audio(i) for i in audio):
            return "non-audio token inside the span"
        if len(audio) < max(min_len, 1):
            return f"{len(audio)} tokens, fewer than {max(min_len, 1)}"
        if len(audio) > max_len:
            return f"{len(audio)} tokens, more than {max_len}"
        return None

    # ---- one static batch ---------------------------------------------------------------------

    def decode(self, prompts: list[list[int]], max_new: list[int], seeds: list[int],
               min_new: list[int] | None = None) -> list[list[int]]:
        """Generated ids for each prompt: up to and including ``<|end_of_audio|>``, or ``max_new``
        ids when it never came (``models.decoding``, the loop evaluation uses too). Beam search
        also bars ``<|end_of_audio|>`` before ``min_new`` audio ids (its hypotheses compete on
        likelihood, and a too-short one would win and then be rejected)."""
        if self.config.strategy == "beam" and not self.config.ignore_end_of_audio:
            return beam_search_batch(self.model, prompts, max_new, min_new or [0] * len(prompts),
                                     self.config.beam_size, self.allowed if self.config.audio_only else None,
                                     self.tokenizer.eoa, self.tokenizer.pad, self.tokenizer.vocab_size,
                                     self.config.length_penalty)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        stop = () if self.config.ignore_end_of_audio else (self.tokenizer.eoa,)
        return decode_batch(self.model, prompts, max_new, lambda logits, active: self._choose(logits, generators, active),
                            stop, self.tokenizer.pad, self.tokenizer.vocab_size)

    def _choose(self, logits: torch.Tensor, generators: list[torch.Generator], active: list[bool]) -> list[int]:
        """The next token of each active row (-1 for the others). Only active rows draw from their
        generator, so a span's draws do not depend on the rows beside it."""
        if self.config.audio_only:
            logits = logits.masked_fill(~self.allowed, float("-inf"))
        if self.config.strategy == "greedy":
            return logits.argmax(dim=-1).tolist()
        probs = filtered_probabilities(logits, self.config.temperature, self.config.top_k, self.config.top_p).cpu()
        return [int(torch.multinomial(p, 1, generator=g)) if on else -1
                for p, g, on in zip(probs, generators, active)]


def filtered_probabilities(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Softmax of ``logits / temperature`` restricted to the top-k ids and the smallest set whose
    probability reaches ``top_p`` (always at least the most likely id)."""
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # mass before this id
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)
