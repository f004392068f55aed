"""What the speech tokenizer's README reports: greedy ASR word error rate through the tokens, codebook
usage and perplexity, on a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_speech.speech_tokenizer.quantizer import perplexity
from megatron_speech.speech.audio import load_audio, pad_batch


@torch.no_grad()
def evaluate_manifest(model, manifest: str | Path, batch_size: int = 16, unquantized: bool = False) -> dict:
    """WER of greedy decoding of each utterance's speech tokens (CTC for the Conformer tokenizer,
    Whisper's decoder for the Whisper one), and the codebook statistics.

    Why through the tokens: they are what ``tools/tokenize_speech.py`` writes and every later stage
    reads, so this WER is the "real-audio tokens" figure synthetic tokens are judged against; and the
    layers under the quantizer run once per batch for both the tokens and the geometry.

    ``unquantized``: also the WER with the quantizer bypassed (the frames it would round, read as they
    are by the layers above; ``wer_unquantized``, in total and per voice), a second greedy pass. Why: it
    separates what the codes lose from what the trained layers around them lose."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    manifest = Path(manifest)
    lines = [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]
    model.eval()
    usage = torch.zeros(model.quantizer.num_codes)
    hyps, refs, speakers, hyps_unquantized = [], [], [], []
    geometry = QuantizerInput()
    for start in range(0, len(lines), batch_size):
        chunk = list(enumerate(lines[start:start + batch_size], start + 1))
        audio, lengths = pad_batch([load_audio(manifest, n, line, model.cfg.sample_rate) for n, line in chunk])
        vectors = model.continuous_vectors(audio, lengths)
        codes = [model.quantizer.nearest(v).cpu() for v in vectors]
        usage += torch.bincount(torch.cat(codes), minlength=usage.numel()).to(usage.dtype)
        hyps += model.transcribe_tokens([c.tolist() for c in codes])
        if unquantized:
            hyps_unquantized += model.transcribe_vectors(vectors)
        refs += [line["text"] for _, line in chunk]
        speakers += [line.get("speaker", "") for _, line in chunk]
        geometry.add(vectors, speakers[-len(chunk):], model.quantizer)
    by_speaker = _by_speaker(hyps, refs, speakers)
    for speaker, error in geometry.relative_errors().items():
        by_speaker[speaker]["quantization_error"] = error
    bypassed = {}
    if unquantized:
        for speaker, v in _by_speaker(hyps_unquantized, refs, speakers).items():
            by_speaker[speaker]["wer_unquantized"] = v["wer"]
        bypassed = {"wer_unquantized": word_error_rate(hyps_unquantized, refs),
                    "cer_unquantized": word_error_rate(hyps_unquantized, refs, use_cer=True)}
    return {
        "manifest": manifest.name,
        "utterances": len(lines),
        "wer": word_error_rate(hyps, refs),
        "cer": word_error_rate(hyps, refs, use_cer=True),
        **bypassed,
        "by_speaker": by_speaker,
        "codebook_usage": (usage > 0).float().mean().item(),
        "perplexity": float(perplexity(usage)),
        "quantization_error": geometry.relative_error(),
        "voice_variance_share": geometry.voice_share(),
        "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]],
    }


class QuantizerInput:
    """What the tokens lose, per voice: the frames just before the quantizer, summed as they stream by.

    Why: a voice the tokenizer hears badly (a held-out voice) may have frames that fall between the
    codes (a larger relative quantization error, ||frame - nearest code||^2 / ||frame||^2 summed over
    its frames), or frames shifted as a whole (a voice offset, which per-utterance normalisation would
    remove: the share of the frames' variance that the voices' means explain, an R^2)."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.sum: dict[str, torch.Tensor] = {}
        self.square: dict[str, float] = {}
        self.error: dict[str, float] = {}
        self.norm: dict[str, float] = {}

    def add(self, vectors: list[torch.Tensor], speakers: list[str], quantizer) -> None:
        for frames, speaker in zip(vectors, speakers):
            frames = frames.double()
            error, norm = quantizer.squared_errors(frames.to(quantizer.codebook.dtype))
            self.count[speaker] = self.count.get(speaker, 0) + frames.shape[0]
            self.sum[speaker] = self.sum.get(speaker, 0) + frames.sum(0)
            self.square[speaker] = self.square.get(speaker, 0.0) + float(frames.pow(2).sum())
            self.error[speaker] = self.error.get(speaker, 0.0) + float(error.sum())
            self.norm[speaker] = self.norm.get(speaker, 0.0) + float(norm.sum())

    def relative_errors(self) -> dict[str, float]:
        return {s: self.error[s] / max(self.norm[s], 1e-12) for s in self.count}

    def relative_error(self) -> float | None:
        norm = sum(self.norm.values())
        return sum(self.error.values()) / norm if norm > 0 else None

    def voice_share(self) -> float | None:
        """Between-voice variance over the total variance of the frames; None with fewer than 2 voices."""
        if len(self.count) < 2:
            return None
        n = sum(self.count.values())
        mean = sum(self.sum.values()) / n
        total = sum(self.square.values()) / n - float(mean.pow(2).sum())
        between = sum(c * float((self.sum[s] / c - mean).pow(2).sum()) for s, c in self.count.items()) / n
        return between / total if total > 0 else None


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
    if result.get("wer_unquantized") is not None:
        lines.append(f"[eval]   the quantizer bypassed: WER {result['wer_unquantized']:.1%} "
                     f"(CER {result['cer_unquantized']:.1%})")
    if result.get("quantization_error") is not None:
        share = result.get("voice_variance_share")
        lines.append(f"[eval]   quantizer input: relative quantization error {result['quantization_error']:.3f}"
                     + ("" if share is None else f", the voices' means explain {share:.1%} of its variance"))
    for speaker, v in result["by_speaker"].items():
        error = "" if v.get("quantization_error") is None else f", quantization error {v['quantization_error']:.3f}"
        error += "" if v.get("wer_unquantized") is None else f", bypassed WER {v['wer_unquantized']:.1%}"
        lines.append(f"[eval]   {speaker}: WER {v['wer']:.1%}, CER {v['cer']:.1%}{error} ({v['utterances']} utterances)")
    return lines
