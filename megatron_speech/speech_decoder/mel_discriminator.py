"""A discriminator over mel frames in time: the training-only critic of the adversarial term.

Why: regression (the ``l1`` head) under uncertain timing inside a token averages the plausible
frames, which blurs them in time, and the judges need that movement most (``examples/speech_decoder``,
the damage table: a token's frames replaced by their mean cost 50 points). A critic that tells true
frame sequences from predicted ones rewards sharp, committed transitions that L1 alone cannot; the
decoder stays deterministic and streaming (the critic is not used at inference).

Mel bins are the channels and the convolutions run along time (what is judged is movement across
frames); weight norm and LeakyReLU as HiFi-GAN's discriminators. ``forward`` returns the patch
scores [B, frames'] and every layer's features, the inputs of NeMo's HiFi-GAN losses (least-squares
scores and feature matching).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm


class MelDiscriminator(nn.Module):
    def __init__(self, n_mels: int, channels: int = 128, layers: int = 4, kernel: int = 5) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"the mel discriminator needs at least one layer, got {layers}")
        widths = [n_mels] + [channels * min(2 ** (i // 2), 4) for i in range(layers)]
        strides = [1 if i % 2 == 0 else 2 for i in range(layers)]  # every other layer halves the frames
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(w_in, w_out, kernel, stride, padding=kernel // 2))
            for w_in, w_out, stride in zip(widths, widths[1:], strides))
        self.score = weight_norm(nn.Conv1d(widths[-1], 1, 3, padding=1))

    def forward(self, mels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """mels [B, n_mels, frames] -> (scores [B, frames'], features of each layer)."""
        features = []
        h = mels
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
            features.append(h)
        score = self.score(h)
        features.append(score)
        return score.squeeze(1), features
