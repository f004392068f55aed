"""How good the speech decoder's audio is, by judges that did not make it (``judges``).

For each test utterance three versions of the same sentence: the original audio, copy-synthesis (its
true mel through the vocoder: the vocoder's own loss) and the decoded audio (the speech tokenizer's
tokens -> token-to-mel model -> vocoder: what a speech LM's spoken answer sounds like). Each judge
transcribes all three, and WER is reported per voice group; the gap decoded - copy-synthesis is the
token-to-mel model's loss. Also the round trip (decoded audio tokenized again: the share of tokens
that come back), the real-time factors and streaming against offline decoding.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from megatron_speech.speech.audio import load_audio, write_wav
from megatron_speech.speech_decoder.vocoder import Vocoder

VERSIONS = ("original", "copy_synthesis", "decoded")


def write_audio(path: Path, audio: np.ndarray, rate: int) -> Path:
    """Float samples in [-1, 1] (clipped) as a 16-bit wav."""
    write_wav(path, np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16), rate)
    return path


def decoder_voice(decoder, line: dict, fallback_speaker: str) -> str:
    """The voice to decode a manifest record in: its own if the decoder's speaker table has it (a
    held-out voice does not), else ``fallback_speaker``."""
    voice = line.get("speaker")
    return voice if voice in list(decoder.cfg.speakers) else fallback_speaker


def tokens_of(tokenizer, audio: torch.Tensor) -> list[int]:
    """One utterance's speech tokens (audio: float samples [n] at the tokenizer's rate)."""
    return tokenizer.tokenize(audio[None], torch.tensor([audio.numel()]))[0]


def decoder_input(decoder, tokenizer, audio: torch.Tensor, tokens: list[int]):
    """What the decoder reads of an utterance: its tokens, or for a decoder built on the tokenizer's
    continuous vectors (the quantization diagnostic, ``speech_decoder.vector_store``) those."""
    if not decoder.net_settings.feature_dim:
        return tokens
    return tokenizer.continuous_vectors(audio[None], torch.tensor([audio.numel()]))[0]


def decode_as(decoder, tokenizer, audio: torch.Tensor, tokens: list[int], line: dict,
              fallback_speaker: str) -> tuple[str, torch.Tensor]:
    """The voice a manifest record is decoded in (``decoder_voice``) and the decoder's mel of the
    utterance: of its ``tokens``, or of its vectors for a decoder of vectors (``decoder_input``)."""
    voice = decoder_voice(decoder, line, fallback_speaker)
    inputs = decoder_input(decoder, tokenizer, audio, tokens)
    return voice, decoder.decode([inputs], [decoder.speaker_id(voice)])[0]


def make_versions(decoder, tokenizer, manifest: Path, lines: list[tuple[int, dict]], out: Path,
                  fallback_speaker: str, vocoder: Vocoder) -> tuple[list[dict], dict]:
    """Write each utterance's copy-synthesis and decoded audio under ``out``; returns one row an
    utterance (voice, reference, the three paths, tokens, re-tokenized decoded tokens) and timings."""
    rate = decoder.mel_settings.sample_rate
    rows, timing = [], {"audio_seconds": 0.0, "token_to_mel_seconds": 0.0, "vocoder_seconds": 0.0}
    from tqdm import tqdm

    for number, line in tqdm(lines, desc=f"decode {manifest.name}", unit="utt"):
        audio = load_audio(manifest, number, line, rate)
        tokens = tokens_of(tokenizer, audio)
        true_mel = decoder.mel(audio[None])[0]
        name = Path(line["audio_filepath"]).stem + f"-{number}.wav"
        copy = write_audio(out / "copy_synthesis" / name, vocoder(true_mel), rate)
        began = time.perf_counter()
        voice, mel = decode_as(decoder, tokenizer, audio, tokens, line, fallback_speaker)
        middle = time.perf_counter()
        decoded_audio = vocoder(mel)
        timing["token_to_mel_seconds"] += middle - began
        timing["vocoder_seconds"] += time.perf_counter() - middle
        timing["audio_seconds"] += len(decoded_audio) / rate
        decoded = write_audio(out / "decoded" / name, decoded_audio, rate)
        again = tokens_of(tokenizer, torch.from_numpy(decoded_audio.astype(np.float32)))
        rows.append({"voice": line.get("speaker", ""), "decoder_voice": voice, "ref": line["text"],
                     "original": str(manifest.parent / line["audio_filepath"]), "copy_synthesis": str(copy),
                     "decoded": str(decoded), "tokens": tokens, "tokens_again": again})
    return rows, timing


def round_trip(rows: list[dict]) -> float:
    """The share of token positions whose code survives decoding and re-tokenizing."""
    same = total = 0
    for row in rows:
        n = min(len(row["tokens"]), len(row["tokens_again"]))
        same += sum(a == b for a, b in zip(row["tokens"][:n], row["tokens_again"][:n]))
        total += len(row["tokens"])
    return same / max(total, 1)


def judge_rows(rows: list[dict], judges: dict) -> dict:
    """{judge: {group: {version: WER, "utterances": n}}}; groups are the voices and their engines."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    report = {}
    for name, judge in judges.items():
        hyps = {v: judge.transcribe([Path(r[v]) for r in rows]) for v in VERSIONS}
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row["voice"], []).append(i)
            groups.setdefault(row["voice"].split(":")[0] + " (all)", []).append(i)
        report[name] = {group: {"utterances": len(index),
                                **{v: word_error_rate([hyps[v][i] for i in index], [rows[i]["ref"] for i in index])
                                   for v in VERSIONS}}
                        for group, index in sorted(groups.items())}
        for i, row in enumerate(rows):
            row.setdefault("hyps", {})[name] = {v: hyps[v][i] for v in VERSIONS}
    return report


@torch.no_grad()
def streaming_check(decoder, rows: list[dict], limit: int = 10) -> dict:
    """Largest difference between block-by-block and offline mels, and the time to the first block;
    ``None`` for a decoder that does not stream (``block_size`` 0: full attention) or reads vectors."""
    if not decoder.net_settings.block_size or decoder.net_settings.feature_dim:
        return {"utterances": 0, "max_abs_difference": None, "first_block_seconds": None, "block_tokens": 0,
                "lookahead_tokens": decoder.net_settings.lookahead}
    worst, first_block = 0.0, []
    for row in rows[:limit]:
        tokens = torch.tensor(row["tokens"])
        speaker = decoder.speaker_id(row["decoder_voice"])
        offline = decoder.decode([row["tokens"]], [speaker])[0]
        began = time.perf_counter()
        blocks = []
        for block in decoder.net.stream(tokens, speaker):
            if not blocks:
                first_block.append(time.perf_counter() - began)
            blocks.append(block)
        worst = max(worst, float((torch.cat(blocks, dim=-1) - offline).abs().max()))
    return {"utterances": min(limit, len(rows)), "max_abs_difference": worst,
            "first_block_seconds": float(np.mean(first_block)) if first_block else None,
            "block_tokens": decoder.net_settings.block_size, "lookahead_tokens": decoder.net_settings.lookahead}


def read_lines(manifest: Path, limit: int, voices: list[str] | None = None) -> list[tuple[int, dict]]:
    """(line number, record) of the first ``limit`` utterances of each voice (of ``voices`` only, if given)."""
    out, taken = [], {}
    with open(manifest) as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            line = json.loads(raw)
            voice = line.get("speaker", "")
            if (voices is None or voice in voices) and taken.get(voice, 0) < limit:
                out.append((number, line))
                taken[voice] = taken.get(voice, 0) + 1
    return out
