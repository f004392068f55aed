"""What the speech tokenizer's README reports: greedy ASR word error rate through the tokens, codebook
usage and perplexity, on a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_speech.speech_tokenizer.quantizer import perplexity
from megatron_speech.speech.audio import load_audio, pad_batch


@torch.no_grad()
def evaluate_manifest(model, manifest: str | Path, batch_size: int = 16) -> dict:
    """WER of greedy decoding through the quantized tokens (CTC for the Conformer tokenizer, Whisper's
    decoder for the Whisper one), and the codebook statistics."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    manifest = Path(manifest)
    lines = [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]
    model.eval()
    model.quantizer.reset_usage()
    hyps, refs, speakers = [], [], []
    for start in range(0, len(lines), batch_size):
        chunk = list(enumerate(lines[start:start + batch_size], start + 1))
        audio, lengths = pad_batch([load_audio(manifest, n, line, model.cfg.sample_rate) for n, line in chunk])
        hyps += model.transcribe_audio(audio, lengths)
        refs += [line["text"] for _, line in chunk]
        speakers += [line.get("speaker", "") for _, line in chunk]
    return {
        "manifest": manifest.name,
        "utterances": len(lines),
        "wer": word_error_rate(hyps, refs),
        "cer": word_error_rate(hyps, refs, use_cer=True),
        "by_speaker": _by_speaker(hyps, refs, speakers),
        "codebook_usage": model.quantizer.codebook_usage(),
        "perplexity": float(perplexity(model.quantizer.usage)),
        "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]],
    }


def _by_speaker(hyps: list[str], refs: list[str], speakers: list[str]) -> dict[str, dict]:
    """WER and CER per voice: one average hides that some training voices are much harder than others."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    report = {}
    for speaker in sorted(set(speakers)):
        pairs = [(h, r) for h, r, s in zip(hyps, refs, speakers) if s == speaker]
        h, r = [p[0] for p in pairs], [p[1] for p in pairs]
        report[speaker] = {"utterances": len(pairs), "wer": word_error_rate(h, r),
                           "cer": word_error_rate(h, r, use_cer=True)}
    return report


def report_lines(result: dict) -> list[str]:
    """What the tools print of one manifest's result: the totals, then each voice."""
    lines = [f"[eval] {result['manifest']}: WER {result['wer']:.1%} (CER {result['cer']:.1%}), codebook usage "
             f"{result['codebook_usage']:.0%}, perplexity {result['perplexity']:.0f}"]
    for speaker, v in result["by_speaker"].items():
        lines.append(f"[eval]   {speaker}: WER {v['wer']:.1%}, CER {v['cer']:.1%} ({v['utterances']} utterances)")
    return lines
