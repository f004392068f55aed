"""Do synthetic speech tokens keep their words? Transcribe them with the speech tokenizer's ASR head.

The paper checks its text-to-token model this way (WER of the tokens' transcription against the
text). The ASR head's WER on tokens of real audio of the same sentences is reported beside it: the
synthetic tokens cannot say more than the tokenizer lets through, so that is the floor to read the
synthetic figure against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from megatron_speech.speech.text import normalize_text
from megatron_speech.synthesis.generate import SpanGenerator


def _error_rates(hyps: list[str], refs: list[str]) -> tuple[float, float]:
    """(word, character) error rates; the character rate shows what a misspelt word still keeps."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    if not refs:
        return float("nan"), float("nan")
    return float(word_error_rate(hyps, refs)), float(word_error_rate(hyps, refs, use_cer=True))


def wer_gap(synthetic: list[str], real: list[str], refs: list[str], resamples: int = 2000, seed: int = 0) -> dict:
    """Synthetic minus real-token WER on the same sentences, in points, with a 95% bootstrap interval
    over the sentences. Why: a goal on the gap (within 5 points) is met or missed by tenths, and one
    draw of 400 sentences moves it by more; the interval says how much."""
    from nemo.collections.asr.metrics.wer import word_error_rate_per_utt

    words = np.array([len(r.split()) for r in refs], dtype=float)
    if not refs or words.sum() == 0:
        return {"points": float("nan"), "ci95": [float("nan")] * 2, "sentences": len(refs)}

    def errors(hyps: list[str]) -> np.ndarray:  # an empty reference: every word heard is an insertion
        rates = word_error_rate_per_utt(hyps, refs)[0]
        return np.array([rate * n if n else len(h.split()) for rate, n, h in zip(rates, words, hyps)])

    difference = errors(synthetic) - errors(real)
    draws = np.random.default_rng(seed).integers(0, len(refs), (resamples, len(refs)))
    boot = difference[draws].sum(1) / words[draws].sum(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"points": float(100 * difference.sum() / words.sum()), "ci95": [float(100 * low), float(100 * high)],
            "sentences": len(refs)}


def evaluate_synthesis(generator: SpanGenerator, speech_model, records: list[dict], batch_size: int = 32,
                       voices_from_records: bool = False) -> dict:
    """``records``: ``{text, speech_tokens?, speaker?}`` (tokenize_speech output); one synthesized span
    each. ``voices_from_records``: a voice-conditioned model speaks each text in the voice of its
    real recording (``speaker``), so synthetic and real tokens are compared voice for voice."""
    texts = [r["text"] for r in records]
    voices = [_speaker(r, i) for i, r in enumerate(records)] if voices_from_records else None
    results = generator.generate(texts, seeds=list(range(len(texts))), voices=voices)
    kept = [i for i, r in enumerate(results) if r.codes is not None]
    hyps: list[str] = []
    for start in range(0, len(kept), batch_size):
        hyps += speech_model.transcribe_tokens([list(results[i].codes) for i in kept[start:start + batch_size]])
    refs = [normalize_text(texts[i]) for i in kept]
    report = {
        "spans": len(texts),
        "accepted": len(kept),
        "voice": "each record's speaker" if voices_from_records else generator.config.voice,
        "rejected_reasons": sorted({r.reason for r in results if r.codes is None}),
        "synthetic_tokens_per_char": sum(len(results[i].codes) for i in kept) / max(1, sum(len(t) for t in refs)),
        "examples": [{"text": r, "transcript": h} for r, h in list(zip(refs, hyps))[:5]],
    }
    report["synthetic_wer"], report["synthetic_cer"] = _error_rates(hyps, refs)
    if voices is not None:
        report["synthetic_wer_by_voice"] = {
            v: _error_rates([h for i, h in zip(kept, hyps) if voices[i] == v],
                            [r for i, r in zip(kept, refs) if voices[i] == v])[0]
            for v in sorted({voices[i] for i in kept})}
    real = [i for i, r in enumerate(records) if r.get("speech_tokens")]
    if real:
        real_hyps = []
        for start in range(0, len(real), batch_size):
            batch = real[start:start + batch_size]
            real_hyps += speech_model.transcribe_tokens([records[i]["speech_tokens"] for i in batch])
        real_refs = [normalize_text(texts[i]) for i in real]
        report["real_tokens_wer"], report["real_tokens_cer"] = _error_rates(real_hyps, real_refs)
        report["real_tokens_per_char"] = sum(len(records[i]["speech_tokens"]) for i in real) / max(
            1, sum(len(t) for t in real_refs))
        synthetic_of, real_of = dict(zip(kept, hyps)), dict(zip(real, real_hyps))
        both = [i for i in kept if i in real_of]  # the gap compares a sentence with itself
        report["wer_gap"] = wer_gap([synthetic_of[i] for i in both], [real_of[i] for i in both],
                                    [normalize_text(texts[i]) for i in both])
    return report


def _speaker(record: dict, index: int) -> str:
    voice = record.get("speaker")
    if not isinstance(voice, str) or not voice:
        raise ValueError(f"record {index} ({record.get('id')!r}) has no 'speaker' to speak it in; "
                         "tokenize the manifest again (tools/tokenize_speech.py keeps its speakers)")
    return voice


def read_records(path: str | Path, limit: int | None = None) -> list[dict]:
    """Unique texts of a speech-token jsonl (the first record of each text), in file order."""
    seen, out = set(), []
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        if record["text"] not in seen:
            seen.add(record["text"])
            out.append(record)
    return out[:limit]
