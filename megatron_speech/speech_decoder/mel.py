"""The speech decoder's mel spectrogram, and Griffin-Lim: the mini recipe's vocoder.

One definition of the frames serves the token-to-mel model's targets, the vocoder and the tests:
16 kHz audio, hop 256, so a 12.5 Hz speech token (1,280 samples) is exactly 5 frames (and two 25 Hz
tokens are 5 frames: ``token_frames`` gives the smallest whole group). The values
are natural-log amplitude mels, shifted and scaled (``mean``, ``std``) to about unit variance,
because flow matching starts from unit Gaussian noise. The filter bank is librosa's, so that
librosa's mel inversion (Griffin-Lim) undoes exactly what this module computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

LOG_FLOOR = 1e-5  # amplitude floor before the log: silence is log(1e-5) = -11.5
MAX_TOKENS_PER_GROUP = 4  # crops and streaming blocks align to a group: keep it small


@dataclass(frozen=True)
class MelSettings:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    mean: float = -5.0  # of the log mels of speech; (log mel - mean) / std is what the model sees
    std: float = 2.5

    def frames(self, num_samples: int) -> int:
        """Frames of ``num_samples`` (centred STFT: one frame every hop, plus the first)."""
        return 1 + num_samples // self.hop_length

    def token_frames(self, token_rate: float) -> tuple[int, int]:
        """``(frames, tokens)``: the smallest whole number of mel frames that spans a whole number of
        speech tokens (12.5 Hz at 16 kHz, hop 256: 5 frames a token; 25 Hz: 5 frames every 2 tokens).
        A rate whose group would be long (a hop that does not fit the token) is an error."""
        ratio = Fraction(self.sample_rate, self.hop_length) / Fraction(token_rate).limit_denominator(1000)
        if ratio.denominator > MAX_TOKENS_PER_GROUP:
            raise ValueError(f"{self.sample_rate} Hz / hop {self.hop_length} is {float(ratio):.3f} frames a token at "
                             f"{token_rate} Hz ({ratio.numerator} frames every {ratio.denominator} tokens): choose "
                             f"a hop that fits the token's samples")
        return ratio.numerator, ratio.denominator

    def filter_bank(self) -> torch.Tensor:
        import librosa

        bank = librosa.filters.mel(sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.fmin,
                                   fmax=self.fmax)
        return torch.from_numpy(bank).float()  # [n_mels, n_fft // 2 + 1]


class MelSpectrogram(torch.nn.Module):
    """Audio [B, samples] -> normalised log mels [B, n_mels, frames]."""

    def __init__(self, settings: MelSettings) -> None:
        super().__init__()
        self.settings = settings
        self.register_buffer("bank", settings.filter_bank(), persistent=False)
        self.register_buffer("window", torch.hann_window(settings.n_fft), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        s = self.settings
        spec = torch.stft(audio, s.n_fft, s.hop_length, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs()
        return (torch.log(torch.clamp(self.bank @ spec, min=LOG_FLOOR)) - s.mean) / s.std


def griffin_lim(mels: torch.Tensor, settings: MelSettings, iterations: int = 32) -> np.ndarray:
    """Normalised log mels [n_mels, frames] -> float samples, ``hop_length`` a frame (librosa's mel
    inversion + Griffin-Lim): a speech token's 5 frames become its 1,280 samples.

    The CPU vocoder of the mini recipe: no training, about a point of WER lost against the original
    audio by the issue's measurement; a trained vocoder has to beat it to be worth its minutes."""
    import librosa

    s = settings
    amplitude = np.exp(mels.detach().float().cpu().numpy() * s.std + s.mean)
    magnitude = librosa.feature.inverse.mel_to_stft(amplitude, sr=s.sample_rate, n_fft=s.n_fft, power=1.0,
                                                    fmin=s.fmin, fmax=s.fmax)
    # phases start from a fixed draw: the same mels always give the same audio (reruns, shards)
    audio = librosa.griffinlim(magnitude, n_iter=iterations, hop_length=s.hop_length, random_state=0)
    # a centred STFT of F frames spans (F - 1) hops; the last hop is silence
    audio = np.pad(audio, (0, amplitude.shape[-1] * s.hop_length - len(audio)))
    return np.clip(audio, -1.0, 1.0)
