"""Speech tokens -> mel frames: CosyVoice's decoder (GLM-4-Voice's) in small, trainable on a CPU.

Token embeddings and a speaker embedding go through a transformer at the token rate (cheap: 12.5
steps a second), are repeated to the frame rate (5 frames a token at 16 kHz, hop 256; or, ``upsample:
linear``, projected to frame vectors of their own) and refined by causal convolutions at the frame
rate, then projected to ``mu``: a mel-shaped condition. A rate whose tokens are not a whole number
of frames (25 Hz: 2.5 frames) is upsampled a group at a time: ``tokens_per_group`` tokens become
``frames_per_group`` frames (2 -> 5), so frames never straddle tokens of two groups. Two heads:

- ``l1``: ``mu`` is the mel (L1 regression): fast, blurry.
- ``flow``: conditional flow matching (NeMo's ``OptimalTransportFlow`` and Euler sampler) from
  Gaussian noise to the mel, a causal convolutional estimator conditioned on ``mu`` and the flow
  time; ``mu`` keeps an L1 term (``mu_l1_weight``) so that the condition is a mel from the start.

Streaming, as GLM-4-Voice's first audio after a few tokens, on CosyVoice 2's plan: one convolution
looks ``lookahead`` tokens ahead, before a transformer whose attention is block-causal (a token sees
its own block and every earlier one; a look-ahead inside attention would compound layer by layer),
everything at the frame rate is causal, and the flow's starting noise is a fixed buffer. So the
frames of a block depend only on tokens up to the block's end plus the look-ahead, and ``stream``
(one block at a time) gives what offline decoding gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

HEADS = ("l1", "flow")
UPSAMPLES = ("repeat", "linear")
NOISE_FRAMES = 4096  # the fixed noise buffer: 65 s at 62.5 frames/s; longer outputs repeat it


@dataclass
class TokenToMelSettings:
    codebook_size: int
    feature_dim: int = 0  # > 0: the input is the tokenizer's continuous vectors, not tokens (vector_store)
    num_speakers: int = 1  # a lookup table of the training voices (index 0 when there is one)
    n_mels: int = 80
    frames_per_group: int = 5  # mel frames of ...
    tokens_per_group: int = 1  # ... this many tokens (MelSettings.token_frames: 5 of 1 at 12.5 Hz, 5 of 2 at 25 Hz)
    d_model: int = 192
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 768
    dropout: float = 0.1
    frame_conv_layers: int = 2
    conv_kernel: int = 5
    upsample: str = "repeat"  # repeat | linear: how a token's vector becomes its frames (see condition)
    head: str = "flow"  # l1 | flow
    mu_l1_weight: float = 1.0  # flow head: the L1 term on mu
    estimator_channels: int = 192
    estimator_layers: int = 4
    flow_steps: int = 10  # Euler steps at inference
    sigma_end: float = 1e-4
    block_size: int = 10  # tokens a streaming block (0: full attention, no streaming); whole groups
    lookahead: int = 2  # tokens of the next block a block may see
    max_tokens: int = 1500  # positions (2 minutes at 12.5 Hz)
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if self.lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {self.lookahead}")
        if self.frames_per_group < 1 or self.tokens_per_group < 1:
            raise ValueError(f"frames_per_group and tokens_per_group must be >= 1, got {self.frames_per_group}, "
                             f"{self.tokens_per_group}")
        if self.block_size % self.tokens_per_group:
            raise ValueError(f"block_size {self.block_size} is not a whole number of token groups "
                             f"({self.tokens_per_group} tokens): a group's frames would straddle two blocks")


def block_mask(num_tokens: int, block_size: int, device=None) -> torch.Tensor | None:
    """[T, T] boolean, True where attention is *not* allowed (PyTorch's convention): token i sees
    every token before the end of its block."""
    if not block_size:
        return None
    index = torch.arange(num_tokens, device=device)
    visible_until = (index // block_size + 1) * block_size  # exclusive
    return index[None, :] >= visible_until[:, None]


class CausalConv(nn.Module):
    """A 1-d convolution that sees only the present and the past (left padding)."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int) -> None:
        super().__init__()
        self.pad = kernel - 1
        self.conv = nn.Conv1d(channels_in, channels_out, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        return self.conv(F.pad(x, (self.pad, 0)))


class VectorFieldEstimator(nn.Module):
    """The flow's estimator, with the signature NeMo's Euler sampler calls:
    ``(input=[B, 2 * n_mels, T] (state, mu), input_length, condition=time [B]) -> (field, input_length)``.

    Causal in time and free of normalisation across frames (GroupNorm would mix the future in), so
    the streaming guarantee holds."""

    def __init__(self, n_mels: int, channels: int, layers: int, kernel: int) -> None:
        super().__init__()
        self.channels = channels
        self.inp = nn.Conv1d(2 * n_mels, channels, 1)
        self.time = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.blocks = nn.ModuleList(CausalBlock(channels, kernel) for _ in range(layers))
        self.out = nn.Conv1d(channels, n_mels, 1)

    def forward(self, input: torch.Tensor, input_length: torch.Tensor | None, condition: torch.Tensor):
        t = self.time(timestep_embedding(condition, self.channels))
        h = self.inp(input)
        for block in self.blocks:
            h = block(h, t)
        return self.out(h), input_length


class CausalBlock(nn.Module):
    """Residual causal convolution at the frame rate, with an optional per-channel condition (the
    flow time). No normalisation: one across frames would mix the future in."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = CausalConv(channels, channels, kernel)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv(x)
        if condition is not None:
            h = h + condition[:, :, None]
        return x + self.out(F.gelu(h))


def timestep_embedding(time: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the flow time in [0, 1] (scaled up: small differences must show)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=time.device) / half)
    angles = 1000.0 * time.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TokenToMel(nn.Module):
    def __init__(self, settings: TokenToMelSettings) -> None:
        super().__init__()
        s = self.settings = settings
        if s.feature_dim:  # a diagnostic: vectors of this width instead of token ids (vector_store)
            self.vector_input = nn.Sequential(nn.LayerNorm(s.feature_dim), nn.Linear(s.feature_dim, s.d_model))
        else:
            self.token_embedding = nn.Embedding(s.codebook_size, s.d_model)
        self.speaker_embedding = nn.Embedding(max(1, s.num_speakers), s.d_model)
        self.position = nn.Embedding(s.max_tokens, s.d_model)
        self.look_ahead = nn.Conv1d(s.d_model, s.d_model, s.lookahead + 1)  # token i sees i..i+lookahead
        layer = nn.TransformerEncoderLayer(s.d_model, s.num_heads, s.ffn_dim, s.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, s.num_layers, enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(s.d_model)
        # causal at the frame rate, so no normalisation across frames either (see VectorFieldEstimator)
        self.frame_blocks = nn.ModuleList(CausalBlock(s.d_model, s.conv_kernel) for _ in range(s.frame_conv_layers))
        self.frame_offset = nn.Embedding(s.frames_per_group, s.d_model)  # where in its group a frame is
        if s.upsample == "linear":  # each group of tokens its own path through its frames
            self.to_frames = nn.Linear(s.tokens_per_group * s.d_model, s.frames_per_group * s.d_model)
        self.to_mu = nn.Conv1d(s.d_model, s.n_mels, 1)
        if s.head == "flow":
            from nemo.collections.audio.parts.submodules.flow import OptimalTransportFlow

            self.estimator = VectorFieldEstimator(s.n_mels, s.estimator_channels, s.estimator_layers, s.conv_kernel)
            self.flow = OptimalTransportFlow(sigma_start=1.0, sigma_end=s.sigma_end)
        generator = torch.Generator().manual_seed(s.noise_seed)
        self.register_buffer("noise", torch.randn(1, s.n_mels, NOISE_FRAMES, generator=generator), persistent=False)

    # ---- shapes ---------------------------------------------------------------------------------

    def frame_lengths(self, token_lengths: torch.Tensor) -> torch.Tensor:
        """Frames of so many tokens (whole frames: 2.5 a token at 25 Hz, so 7 tokens give 17)."""
        return token_lengths * self.settings.frames_per_group // self.settings.tokens_per_group

    def frame_mask(self, token_lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """[B, 1, frames]: 1.0 on each utterance's frames, 0.0 on padding."""
        index = torch.arange(frames, device=token_lengths.device)[None]
        return (index < self.frame_lengths(token_lengths)[:, None])[:, None].float()

    def masked_l1(self, mels: torch.Tensor, target: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
        """Mean absolute difference over the valid frames (padding left out): the L1 loss and the
        validation figure, comparable between the heads."""
        valid = self.frame_mask(token_lengths, mels.shape[-1])
        return ((mels - target[..., : mels.shape[-1]]).abs() * valid).sum() / (valid.sum() * mels.shape[1])

    # ---- the condition --------------------------------------------------------------------------

    def condition(self, tokens: torch.Tensor, token_lengths: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """``mu`` [B, n_mels, frames]: tokens [B, T] (or, with ``feature_dim``, vectors [B, T, D]; padding
        anywhere past each length), speakers [B]."""
        s = self.settings
        width = tokens.shape[1]
        if width > s.max_tokens:
            raise ValueError(f"{width} tokens: longer than max_tokens {s.max_tokens}")
        padding = torch.arange(width, device=tokens.device)[None] >= token_lengths[:, None]
        x = self.embed(tokens, padding).masked_fill(padding[..., None], 0.0)
        ahead = self.look_ahead(F.pad(x.transpose(1, 2), (0, s.lookahead))).transpose(1, 2)  # zeros past the end
        x = x + ahead + self.position.weight[:width][None] + self.speaker_embedding(speakers)[:, None]
        x = self.encoder(x, mask=block_mask(width, s.block_size, tokens.device), src_key_padding_mask=padding)
        h = self.upsample(self.encoder_norm(x)).transpose(1, 2)
        for block in self.frame_blocks:
            h = block(h)
        return self.to_mu(h)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Token vectors [B, T, d] -> frame vectors [B, frame_lengths(T), d], a group of tokens at a
        time (a last, partial group is padded with zeros and its frames past the tokens cut)."""
        s = self.settings
        width, q, p = x.shape[1], s.tokens_per_group, s.frames_per_group
        groups = -(-width // q)
        x = F.pad(x, (0, 0, 0, groups * q - width))
        if s.upsample == "linear":
            frames = self.to_frames(x.reshape(x.shape[0], groups, q * s.d_model)).reshape(x.shape[0], groups * p, -1)
        else:  # frame j repeats the token it lies in: floor(j * q / p)
            frames = x[:, torch.arange(groups * p, device=x.device) * q // p]
        frames = frames + self.frame_offset.weight.repeat(groups, 1)[None]
        return frames[:, : width * p // q]

    def embed(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] of token ids, or of continuous vectors when the model was built for them."""
        if bool(self.settings.feature_dim) != tokens.is_floating_point():
            wanted = f"vectors [B, T, {self.settings.feature_dim}]" if self.settings.feature_dim else "token ids"
            raise ValueError(f"this decoder takes {wanted}, got a {tokens.dtype} tensor of shape {tuple(tokens.shape)}")
        if self.settings.feature_dim:
            return self.vector_input(tokens)
        return self.token_embedding(tokens.masked_fill(padding, 0))

    # ---- training -------------------------------------------------------------------------------

    def loss(self, tokens: torch.Tensor, token_lengths: torch.Tensor, speakers: torch.Tensor,
             mels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses over the valid frames; ``mels`` [B, n_mels, >= frames] (normalised, ``mel.MelSpectrogram``)."""
        mu = self.condition(tokens, token_lengths, speakers)
        target = mels[..., : mu.shape[-1]]
        valid = self.frame_mask(token_lengths, mu.shape[-1])
        weight = valid.sum() * mu.shape[1]
        l1 = self.masked_l1(mu, target, token_lengths)
        if self.settings.head == "l1":
            return {"loss": l1, "l1": l1}
        time = self.flow.generate_time(mu.shape[0]).to(mu.device)
        zeros = torch.zeros_like(target)
        point = self.flow.sample(time=time, x_start=zeros, x_end=target)
        field = self.flow.vector_field(time=time, x_start=zeros, x_end=target, point=point)
        estimate, _ = self.estimator(input=torch.cat([point, mu], dim=1), input_length=None, condition=time)
        flow = (((estimate - field) ** 2) * valid).sum() / weight
        return {"loss": flow + self.settings.mu_l1_weight * l1, "flow": flow, "l1": l1}

    # ---- inference ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, token_lengths: torch.Tensor, speakers: torch.Tensor,
                 flow_steps: int | None = None) -> torch.Tensor:
        """Normalised mels [B, n_mels, frames]; frames past ``frame_lengths`` are meaningless."""
        mu = self.condition(tokens, token_lengths, speakers)
        if self.settings.head == "l1":
            return mu
        return self.sample(mu, flow_steps or self.settings.flow_steps)

    def sample(self, mu: torch.Tensor, steps: int) -> torch.Tensor:
        from nemo.collections.audio.parts.submodules.flow import ConditionalFlowMatchingEulerSampler

        frames = mu.shape[-1]
        repeats = -(-frames // NOISE_FRAMES)
        start = self.noise.repeat(mu.shape[0], 1, repeats)[..., :frames]
        sampler = ConditionalFlowMatchingEulerSampler(self.estimator, num_steps=steps)
        state, _ = sampler(state=start, estimator_condition=mu, state_length=None)
        return state

    @torch.no_grad()
    def stream(self, tokens: torch.Tensor, speaker: int, flow_steps: int | None = None):
        """One utterance's tokens [T] block by block: yields each block's mel frames [n_mels, f * block]
        as soon as its tokens and the look-ahead are known (the last block: when the tokens end).

        Each block reruns the model on every token so far (no cache: a mini model's blocks are cheap,
        and the output is the offline output by construction, which the tests check)."""
        s = self.settings
        if not s.block_size:
            raise ValueError("streaming needs block_size > 0 (block-causal attention)")
        total = tokens.shape[0]
        for start in range(0, total, s.block_size):
            end = min(start + s.block_size, total)
            seen = min(end + s.lookahead, total)
            mels = self.generate(tokens[None, :seen], torch.tensor([seen]), torch.tensor([speaker]), flow_steps)
            first, last = self.frame_lengths(torch.tensor([start, end])).tolist()
            yield mels[0, :, first:last]
