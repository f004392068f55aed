"""Manifest of speech -> jsonl of ``{id, text, speech_tokens}``: the preprocessing tool's input.

Batched through the tokenizer model, resumable, and strict about audio: a missing, empty, corrupt or
wrong-rate file stops the run with the manifest line and file named, or with ``on_error="skip"`` is
left out and listed in ``<output>.errors.jsonl``.

Resuming: lines are appended to ``<output>.partial`` and flushed a batch at a time; a rerun keeps
the complete lines already there (a torn last line is dropped) and continues after them. The
finished file is renamed into place, so a rerun of a finished job does nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_speech.speech.corpus import read_wav


class AudioError(ValueError):
    """Unusable audio: names the manifest, its line and the file."""


@dataclass
class TokenizeConfig:
    manifest: str
    output: str
    model: str  # a .nemo file of SpeechTokenizerModel
    batch_size: int = 16
    on_error: str = "stop"  # stop | skip


def load_audio(manifest: Path, number: int, line: dict, sample_rate: int) -> torch.Tensor:
    path = manifest.parent / line["audio_filepath"]
    where = f"{manifest}:{number}: {path}"
    if not path.exists():
        raise AudioError(f"{where}: file not found")
    try:
        samples, rate = read_wav(path)
    except ValueError as exc:  # already names the file
        raise AudioError(f"{manifest}:{number}: {exc}") from None
    if rate != sample_rate:
        raise AudioError(f"{where}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if samples.size == 0:
        raise AudioError(f"{where}: empty audio")
    return torch.from_numpy(samples.astype("float32") / 32768.0)


def pad_batch(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded [batch, samples] audio and each utterance's length."""
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([w.numel() for w in waves])


def _complete_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    return lines[:-1]  # the last piece is empty (clean end) or a torn line (a crash mid-write)


def tokenize_manifest(config: TokenizeConfig, model=None) -> dict:
    """Returns counts; ``model`` may be passed in (tests), else it is restored from ``config.model``."""
    output, manifest = Path(config.output), Path(config.manifest)
    errors_path = Path(f"{output}.errors.jsonl")
    if output.exists():
        return {"written": sum(1 for _ in output.open()), "skipped": 0, "resumed_from": None, "already_done": True}
    if model is None:
        from megatron_speech.speech.tokenizer_model import SpeechTokenizerModel

        model = SpeechTokenizerModel.restore_from(config.model, map_location="cpu")
    model.eval()
    records = [(n, json.loads(l)) for n, l in enumerate(manifest.read_text().splitlines(), 1) if l.strip()]
    partial = Path(f"{output}.partial")
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _complete_lines(partial)
    errors = [json.loads(l) for l in _complete_lines(Path(f"{errors_path}.partial"))]
    position = len(done) + len(errors)  # records consumed so far, written or skipped
    partial.write_text("".join(l + "\n" for l in done))  # drop a torn line before appending
    skipped = len(errors)
    # Errors are line-buffered, so a skipped record is on disk before any later output line.
    with open(partial, "a") as out, open(f"{errors_path}.partial", "a", buffering=1) as err, \
            tqdm(total=len(records), initial=position, desc="tokenize", unit="utt") as bar:
        for start in range(position, len(records), config.batch_size):
            batch, waves = [], []
            for number, line in records[start:start + config.batch_size]:
                try:
                    waves.append(load_audio(manifest, number, line, model.cfg.sample_rate))
                    batch.append(line)
                except AudioError as exc:
                    if config.on_error == "stop":
                        raise
                    err.write(json.dumps({"line": number, "audio_filepath": line.get("audio_filepath"),
                                          "reason": str(exc)}) + "\n")
                    skipped += 1
            if waves:
                codes = model.tokenize(*pad_batch(waves))
                for line, tokens in zip(batch, codes):
                    record = {"id": line.get("id", line["audio_filepath"]), "text": line.get("text", ""),
                              "speech_tokens": tokens}
                    out.write(json.dumps(record) + "\n")
            out.flush()
            bar.update(len(records[start:start + config.batch_size]))
    os.replace(f"{errors_path}.partial", errors_path)
    os.replace(partial, output)
    return {"written": len(records) - skipped, "skipped": skipped, "resumed_from": position, "already_done": False}
