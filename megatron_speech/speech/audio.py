"""Audio I/O: 16-bit mono wav files, resampling, and the strict manifest audio loader.

Every stage that reads speech (tokenizing, evaluation, training) loads it through ``load_audio``, so
a missing, empty, corrupt or wrong-rate file is the same error everywhere, naming the manifest, its
line and the file.
"""

from __future__ import annotations

import os
import wave
from math import gcd
from pathlib import Path

import numpy as np

from megatron_speech.data.corpus import CorpusError


class AudioError(CorpusError):
    """Unusable audio: a record error (manifest and line) whose reason names the file."""


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the sample rate; any other format is an error naming the file."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit audio, expected 16-bit PCM")
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            channels, rate = w.getnchannels(), w.getframerate()
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a readable wav file ({exc})") from None
    return data.reshape(-1, channels).mean(axis=1).astype(np.int16), rate


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit mono, written to a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())
    os.replace(tmp, path)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return samples
    from scipy.signal import resample_poly

    g = gcd(source_rate, target_rate)
    out = resample_poly(samples.astype(np.float32), target_rate // g, source_rate // g)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)




def load_audio(manifest: Path, number: int, line: dict, sample_rate: int):
    """The utterance of manifest line ``number`` as float samples in [-1, 1] (a torch tensor)."""
    import torch

    path = manifest.parent / line["audio_filepath"]
    if not path.exists():
        raise AudioError(manifest, number, f"{path}: file not found")
    try:
        samples, rate = read_wav(path)
    except ValueError as exc:  # already names the file
        raise AudioError(manifest, number, str(exc)) from None
    if rate != sample_rate:
        raise AudioError(manifest, number, f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if samples.size == 0:
        raise AudioError(manifest, number, f"{path}: empty audio")
    return torch.from_numpy(samples.astype("float32") / 32768.0)


def pad_batch(waves: list):
    """Zero-padded [batch, samples] audio and each utterance's length."""
    import torch

    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([w.numel() for w in waves])
