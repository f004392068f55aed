"""What the speech tokenizer's README reports: greedy ASR word error rate through the tokens, codebook
usage and perplexity, on a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_speech.speech.corpus import read_wav


def _load(manifest: Path, line: dict, sample_rate: int) -> torch.Tensor:
    samples, rate = read_wav(manifest.parent / line["audio_filepath"])
    if rate != sample_rate:
        raise ValueError(f"{manifest}: {line['audio_filepath']} is {rate} Hz, the model takes {sample_rate} Hz")
    return torch.from_numpy(samples.astype("float32") / 32768.0)


@torch.no_grad()
def evaluate_manifest(model, manifest: str | Path, batch_size: int = 16) -> dict:
    """WER of greedy CTC decoding through the quantized tokens, and the codebook statistics."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    manifest = Path(manifest)
    lines = [json.loads(l) for l in manifest.read_text().splitlines() if l.strip()]
    model.eval()
    model.quantizer.reset_usage()
    hyps, refs = [], []
    for start in range(0, len(lines), batch_size):
        chunk = lines[start:start + batch_size]
        waves = [_load(manifest, line, model.cfg.sample_rate) for line in chunk]
        lengths = torch.tensor([w.numel() for w in waves])
        audio = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
        log_probs, token_lengths, _ = model(audio, lengths)
        hyps += model.greedy_decode(log_probs, token_lengths)
        refs += [line["text"] for line in chunk]
    usage = model.quantizer.usage
    probs = usage / usage.sum().clamp_min(1)
    return {
        "manifest": manifest.name,
        "utterances": len(lines),
        "wer": word_error_rate(hyps, refs),
        "codebook_usage": model.quantizer.codebook_usage(),
        "perplexity": float(torch.exp(-(probs * torch.log(probs + 1e-10)).sum())),
        "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]],
    }
