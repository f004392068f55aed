"""Vocoders: the token-to-mel model's normalised mel frames -> a waveform.

Two kinds, one call (``Vocoder``: mels [n_mels, frames] -> float samples, ``hop_length`` a frame):

- ``griffin_lim``: no training (``mel.griffin_lim``), the mini recipe's; on the mini corpus its
  copy-synthesis is within about two WER points of the original audio (the decoder's README).
- NeMo's HiFi-GAN (``HifiGanModel``), the full recipe's (``conf/hifigan_full.yaml``): trained where a
  GPU is lent, not on 2 cores (a full step costs tens of seconds there).

A vocoder must hear the frames the token-to-mel model makes. NeMo's HiFi-GAN computes its input
mels with its own preprocessor, so ``hifigan_preprocessor`` writes that preprocessor from the one
definition of the frames (``mel.MelSettings``): natural-log amplitude mels of the same filter bank,
no pre-emphasis, no dither, no normalisation; exact padding, so that T frames are T hops of audio
(the frames sit half a hop later than ``mel.MelSpectrogram``'s centred ones: 6 ms, and
``tests/test_speech_decoder.py`` checks the values against ours). A HiFi-GAN whose preprocessor
differs is refused with the differing keys named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from megatron_speech.speech_decoder.mel import LOG_FLOOR, MelSettings, griffin_lim

Vocoder = Callable[[torch.Tensor], np.ndarray]
GRIFFIN_LIM = "griffin_lim"


def hifigan_preprocessor(mel: MelSettings) -> dict:
    """NeMo ``FilterbankFeatures`` settings (what NeMo's HiFi-GAN recipes use) that compute ``mel``'s
    frames, unnormalised."""
    return {"_target_": "nemo.collections.asr.parts.preprocessing.features.FilterbankFeatures",
            "sample_rate": mel.sample_rate, "n_window_size": mel.n_fft, "n_window_stride": mel.hop_length,
            "n_fft": mel.n_fft, "window": "hann",
            "nfilt": mel.n_mels, "lowfreq": mel.fmin, "highfreq": mel.fmax, "mel_norm": "slaney",
            "log": True, "log_zero_guard_type": "clamp", "log_zero_guard_value": LOG_FLOOR, "mag_power": 1.0,
            "normalize": None, "preemph": None, "dither": 0.0, "pad_to": 1, "pad_value": 0.0, "exact_pad": True}


def hifigan_model_config(model: DictConfig) -> DictConfig:
    """A recipe's ``model`` section (``mel``, ``generator``, datasets, optim) -> ``HifiGanModel``'s
    config: the preprocessor written from ``mel``; the generator must upsample a frame to a hop and
    training crops must be whole frames (NeMo compares the mels of real and generated crops)."""
    mel = MelSettings(**model.mel)
    rates = list(model.generator.upsample_rates)
    if int(np.prod(rates)) != mel.hop_length:
        raise ValueError(f"generator.upsample_rates {rates} multiply to {int(np.prod(rates))}, not the hop "
                         f"{mel.hop_length}: a frame must become exactly one hop of audio")
    for rate, kernel in zip(rates, model.generator.upsample_kernel_sizes):
        if (kernel - rate) % 2:
            raise ValueError(f"upsample kernel {kernel} for rate {rate}: kernel - rate must be even, or a frame "
                             "gives one sample too many")
    crop = model.train_ds.dataset.get("n_samples")
    if crop and crop % mel.hop_length:
        raise ValueError(f"train_ds.dataset.n_samples {crop} is not a whole number of hops ({mel.hop_length})")
    config = OmegaConf.create(OmegaConf.to_container(model, resolve=True))
    with open_dict(config):
        config.preprocessor = hifigan_preprocessor(mel)
    return config


def check_hifigan(preprocessor: DictConfig | dict, mel: MelSettings, source: str) -> None:
    """Refuse a HiFi-GAN that hears other frames than the token-to-mel model makes."""
    want = hifigan_preprocessor(mel)
    have = dict(preprocessor)
    differ = [f"{key}: vocoder {have.get(key)!r}, decoder {value!r}" for key, value in want.items()
              if key != "_target_" and _differs(have.get(key), value)]
    if differ:
        raise ValueError(f"{source}: this HiFi-GAN's mel frames are not the speech decoder's ({'; '.join(differ)})")


def _differs(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) > 1e-9 * max(1.0, abs(float(b)))
    return a != b


def load_vocoder(spec: str, mel: MelSettings, griffin_lim_iterations: int = 32) -> Vocoder:
    """``griffin_lim``, or the path of a HiFi-GAN ``.nemo`` trained on these frames."""
    if spec == GRIFFIN_LIM:
        return lambda mels: griffin_lim(mels, mel, griffin_lim_iterations)
    path = Path(spec)
    if path.suffix != ".nemo" or not path.is_file():
        raise FileNotFoundError(f"vocoder {spec!r}: neither {GRIFFIN_LIM!r} nor a HiFi-GAN .nemo file")
    from nemo.collections.tts.models import HifiGanModel

    model = HifiGanModel.restore_from(str(path), map_location="cpu").eval()
    check_hifigan(model.cfg.preprocessor, mel, str(path))

    @torch.no_grad()
    def vocode(mels: torch.Tensor) -> np.ndarray:
        log_mels = (mels.float() * mel.std + mel.mean)[None]
        audio = model.convert_spectrogram_to_audio(spec=log_mels)[0]
        return np.clip(audio.numpy(), -1.0, 1.0)

    return vocode
