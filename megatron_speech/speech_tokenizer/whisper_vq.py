"""The Whisper-derived speech tokenizer's network, as GLM-4-Voice builds it, on ``transformers``' Whisper.

    log-mel (100 frames/s) -> conv1, conv2 (50 Hz) -> encoder layers 1..P -> pooling (x4: 12.5 Hz)
        -> layers P+1..Q -> vector quantizer (the speech tokens) -> + a second position table
        -> layers Q+1..N -> layer norm -> Whisper's decoder, trained on the transcript (ASR)

The layers are ``transformers``' ``WhisperEncoder`` and ``WhisperDecoder`` modules, so pretrained
Whisper weights (a Hugging Face folder, or a CTranslate2 folder through ``whisper_weights``) load
unchanged; this module only runs them in a different order. It does not call
``WhisperEncoder.forward``, which insists on 30 s of input: clips keep their own length here, with
attention masks over the padding, and every padded position is zeroed before a convolution or a
pooling window can see it, so a clip gives the same tokens alone or in any batch.

The settings are GLM-4-Voice's (``WhisperVQConfig`` of its released tokenizer, same names and
meanings), so its tokenizer folder loads (``load_glm_folder``). Token count: ``frames = samples //
160`` mel frames, ``ceil(frames / 2)`` after the stride-2 convolution, ``ceil(... / kernel)`` after
pooling, the count GLM-4-Voice's attention mask gives (10 s -> 125 tokens at 12.5 Hz).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from megatron_speech.speech_tokenizer.quantizer import VectorQuantizerEMA

HOP_SAMPLES = 160  # Whisper's log-mel hop at 16 kHz: 100 frames/s
CONV_STRIDE = 2  # conv2's stride: the encoder runs at 50 Hz


@dataclass
class WhisperVQSettings:
    """GLM-4-Voice's ``WhisperVQConfig`` keys (positions count encoder layers from 1)."""

    pooling_position: int = 2  # pool after this many encoder layers
    pooling_kernel_size: int | None = 4  # 50 Hz / 4 = 12.5 Hz; None: no pooling (50 Hz tokens)
    pooling_type: str = "avg"  # avg | max
    quantize_position: int = 2  # quantize after this many layers (>= pooling_position)
    quantize_vocab_size: int = 1024  # codebook size
    quantize_ema_decay: float | None = 0.99  # EMA codebook updates (the only kind implemented)
    quantize_commit_coefficient: float = 0.25  # weight of the commitment loss
    quantize_loss_scale: float = 1.0  # weight of the quantizer's loss beside the ASR loss
    quantize_restart_interval: int | None = 100  # updates between dead-code restarts; None: never
    quantize_encoder_only: bool = False  # only the layers up to the quantizer (a tokenizer, no ASR)
    quantize_causal_encoder: bool = False  # not implemented: refused when true
    quantize_causal_block_size: int | None = None  # block-causal attention, block in 50 Hz frames
    skip_language_detection: bool = False  # GLM-4-Voice's decoding option; English models need none
    encoder_causal_attention: bool = False  # causal attention in every encoder layer
    encoder_causal_convolution: bool = False  # conv1/conv2 see only past frames
    # Not GLM-4-Voice's: the EMA usage below which a code is restarted at a frame of the batch, and
    # how the second position table starts on a pretrained Whisper. GLM-4-Voice copies Whisper's
    # sinusoids; on top of the positions the pooled frames already carry, that took tiny.en's ASR
    # loss from 1.8 to 8.9 before any training (README), so it starts at zero ("zeros").
    quantize_dead_code_threshold: float = 0.1
    quantize_positions2_init: str = "zeros"  # zeros | sinusoid
    # Quantize each frame less the mean frame at its position (a running mean of the training
    # frames, added back after the quantizer). Whisper's frames carry where they are in the clip:
    # position explained 27% of tiny.en's layer-2 variance, and a plain VQ spent its codes on it.
    quantize_position_centering: bool = False
    # In training, this share of the frames passes its second-nearest code to the layers above
    # (``VectorQuantizerEMA.near_miss``): an unheard voice's frames land near, not on, the codes a
    # training voice's would (README, session 42).
    quantize_near_miss: float = 0.0

    def __post_init__(self) -> None:
        if self.quantize_ema_decay is None:
            raise ValueError("quantize_ema_decay: only EMA codebooks are implemented; set a decay such as 0.99")
        if self.quantize_causal_encoder:
            raise ValueError("quantize_causal_encoder: not implemented; use quantize_causal_block_size")
        if self.quantize_positions2_init not in ("zeros", "sinusoid"):
            raise ValueError(f"quantize_positions2_init must be 'zeros' or 'sinusoid', got {self.quantize_positions2_init!r}")
        if self.pooling_type not in ("avg", "max"):
            raise ValueError(f"pooling_type must be 'avg' or 'max', got {self.pooling_type!r}")
        if self.pooling_kernel_size is not None and not 1 <= self.pooling_position <= self.quantize_position:
            raise ValueError(f"pooling_position {self.pooling_position} must be in 1..quantize_position "
                             f"({self.quantize_position})")
        block, kernel = self.quantize_causal_block_size, self.pooling_kernel_size or 1
        if block is not None and block % kernel:
            raise ValueError(f"quantize_causal_block_size {block} must be a multiple of pooling_kernel_size {kernel}")

    @classmethod
    def from_dict(cls, values: dict) -> "WhisperVQSettings":
        """Ours from a dict that may hold Whisper's own config keys too (a GLM-4-Voice config.json)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def frames_per_token(self) -> int:
        """50 Hz encoder frames per token."""
        return self.pooling_kernel_size or 1

    @property
    def token_rate(self) -> float:
        return 16000 / HOP_SAMPLES / CONV_STRIDE / self.frames_per_token


def mel_frames(num_samples: torch.Tensor) -> torch.Tensor:
    return torch.div(num_samples, HOP_SAMPLES, rounding_mode="floor")


def _ceil_div(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.div(x + d - 1, d, rounding_mode="floor")


def _mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


class WhisperVQ(nn.Module):
    """Whisper with a pooled VQ bottleneck inside its encoder (``settings``: ``WhisperVQSettings``)."""

    def __init__(self, whisper_config, settings: WhisperVQSettings) -> None:
        from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder

        super().__init__()
        whisper_config._attn_implementation = "sdpa"
        self.config, self.settings = whisper_config, settings
        layers = whisper_config.encoder_layers
        if not settings.quantize_position <= layers:
            raise ValueError(f"quantize_position {settings.quantize_position} is past the encoder's {layers} layers")
        if settings.quantize_encoder_only:
            whisper_config.encoder_layers = settings.quantize_position
        self.encoder = WhisperEncoder(whisper_config)
        if settings.quantize_encoder_only:
            whisper_config.encoder_layers = layers
            self.encoder.layer_norm = None
        self.decoder = None if settings.quantize_encoder_only else WhisperDecoder(whisper_config)
        d_model = whisper_config.d_model
        self.quantizer = VectorQuantizerEMA(
            settings.quantize_vocab_size, d_model, settings.quantize_ema_decay, settings.quantize_commit_coefficient,
            settings.quantize_dead_code_threshold, restart_interval=settings.quantize_restart_interval,
            near_miss=settings.quantize_near_miss)
        token_positions = math.ceil(whisper_config.max_source_positions / settings.frames_per_token)
        self.embed_positions2 = nn.Embedding(token_positions, d_model)
        self._init_positions2()
        self.register_buffer("position_sum", torch.zeros(token_positions, d_model))
        self.register_buffer("position_count", torch.zeros(token_positions))

    def _init_positions2(self) -> None:
        with torch.no_grad():
            if self.settings.quantize_positions2_init == "zeros":
                self.embed_positions2.weight.zero_()
            else:  # Whisper's table is sinusoidal: the start of it, as GLM-4-Voice does
                self.embed_positions2.weight.copy_(self.encoder.embed_positions.weight[: self.embed_positions2.num_embeddings])

    # ------------------------------------------------------------------ lengths and masks

    def token_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return _ceil_div(_ceil_div(mel_frames(num_samples), CONV_STRIDE), self.settings.frames_per_token)

    def _attention_mask(self, valid: torch.Tensor, block: int | None) -> torch.Tensor:
        """Additive [B, 1, T, T] mask: padding, and block-causal or causal attention when configured."""
        t = valid.shape[1]
        allowed = valid[:, None, None, :].expand(-1, 1, t, t)
        if block is not None:
            blocks = torch.arange(t, device=valid.device) // block
            allowed = allowed & (blocks[None, :] <= blocks[:, None])
        elif self.settings.encoder_causal_attention:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=valid.device).tril()
        mask = torch.zeros(allowed.shape, dtype=self.encoder.conv1.weight.dtype, device=valid.device)
        return mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        if self.settings.encoder_causal_convolution:  # all the padding on the left: no look-ahead
            return F.conv1d(F.pad(x, (conv.kernel_size[0] - 1, 0)), conv.weight, conv.bias, conv.stride)
        return conv(x)

    # ------------------------------------------------------------------ the encoder

    def _front_end(self, features: torch.Tensor, frame_lengths: torch.Tensor):
        """Mel [B, M, T] -> [B, T/2, D] at 50 Hz with positions, and the valid-frame mask."""
        x = features * _mask(frame_lengths, features.shape[-1])[:, None]
        x = F.gelu(self._conv(self.encoder.conv1, x)) * _mask(frame_lengths, x.shape[-1])[:, None]
        x = F.gelu(self._conv(self.encoder.conv2, x))
        lengths = _ceil_div(frame_lengths, CONV_STRIDE)
        if x.shape[-1] > self.config.max_source_positions:
            raise ValueError(f"{x.shape[-1] / 50:.1f} s of audio: this Whisper takes at most "
                             f"{self.config.max_source_positions / 50:.0f} s a clip")
        x = x.transpose(1, 2) + self.encoder.embed_positions.weight[: x.shape[-1]]
        return x, _mask(lengths, x.shape[1])

    def _pool(self, x: torch.Tensor, valid: torch.Tensor):
        k = self.settings.pooling_kernel_size
        x = (x * valid[..., None]).transpose(1, 2)
        if x.shape[-1] % k:
            x = F.pad(x, (0, k - x.shape[-1] % k))
        pool = F.avg_pool1d if self.settings.pooling_type == "avg" else F.max_pool1d
        return pool(x, k).transpose(1, 2), valid[:, ::k]

    def _block(self, pooled: bool) -> int | None:
        block = self.settings.quantize_causal_block_size
        return None if block is None else block // (self.settings.frames_per_token if pooled else 1)

    def _run_layers(self, x: torch.Tensor, valid: torch.Tensor, start: int, stop: int, pooled: bool):
        s = self.settings
        mask = self._attention_mask(valid, self._block(pooled))
        for index in range(start, stop):
            x = self.encoder.layers[index](x, mask)
            if index + 1 == s.pooling_position and s.pooling_kernel_size is not None and not pooled:
                x, valid = self._pool(x, valid)
                pooled = True
                mask = self._attention_mask(valid, self._block(pooled))
        return x, valid, pooled

    def encode_to_quantizer(self, features: torch.Tensor, frame_lengths: torch.Tensor):
        """Continuous frames at the token rate just before the quantizer [B, T, D], and their mask."""
        x, valid = self._front_end(features, frame_lengths)
        x, valid, _ = self._run_layers(x, valid, 0, self.settings.quantize_position, pooled=False)
        if self.settings.quantize_position_centering:
            if self.training:
                self._update_position_mean(x.detach(), valid)
            x = x - self.position_mean(x.shape[1])
        return x, valid

    def position_mean(self, length: int) -> torch.Tensor:
        """[T, D]: the mean training frame at each token position (zero where none was seen)."""
        return self.position_sum[:length] / self.position_count[:length, None].clamp_min(1.0)

    @torch.no_grad()
    def _update_position_mean(self, x: torch.Tensor, valid: torch.Tensor, decay: float = 0.99) -> None:
        t = x.shape[1]
        mask = valid.to(x.dtype)
        self.position_sum[:t].mul_(decay).add_((x * mask[..., None]).sum(0), alpha=1 - decay)
        self.position_count[:t].mul_(decay).add_(mask.sum(0), alpha=1 - decay)

    def encode_tokens(self, codes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """What the decoder attends to, from token vectors [B, T] (ids) or [B, T, D] (quantized)."""
        if self.decoder is None:
            raise ValueError("this tokenizer is encoder-only (quantize_encoder_only): it has no ASR decoder")
        x = self.quantizer.codebook[codes] if codes.dtype == torch.long else codes
        x = x + self.embed_positions2.weight[: x.shape[1]]
        if self.settings.quantize_position_centering:
            x = x + self.position_mean(x.shape[1])
        x = x * valid[..., None]
        x, _, _ = self._run_layers(x, valid, self.settings.quantize_position, len(self.encoder.layers), pooled=True)
        return self.encoder.layer_norm(x)

    # ------------------------------------------------------------------ the decoder

    def decoder_logits(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, V] for decoder inputs ``ids`` [B, L], attending to ``memory``."""
        return self.project(self.decoder_states(ids, memory, memory_valid))

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """Logits over Whisper's vocabulary (its output projection is the tied token table)."""
        return F.linear(states, self.decoder.embed_tokens.weight)

    def decoder_states(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor,
                       cache=None) -> torch.Tensor:
        """The decoder's final states [B, L, D] (before the vocabulary projection). With ``cache`` (a
        ``transformers`` ``EncoderDecoderCache``), ``ids`` continue the ones the cache has seen."""
        d = self.decoder
        past = cache.get_seq_length() if cache is not None else 0
        length = ids.shape[1]
        x = d.embed_tokens(ids) * (math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0)
        x = x + d.embed_positions.weight[past: past + length]
        neg = torch.finfo(x.dtype).min
        seen = torch.arange(past + length, device=x.device)[None] <= torch.arange(past, past + length, device=x.device)[:, None]
        causal = torch.zeros(seen.shape, dtype=x.dtype, device=x.device).masked_fill(~seen, neg)[None, None]
        cross = torch.zeros(memory_valid.shape, dtype=x.dtype, device=x.device).masked_fill(~memory_valid, neg)
        cross = cross[:, None, None, :].expand(-1, 1, length, -1)
        for layer in d.layers:
            x = layer(x, attention_mask=causal, encoder_hidden_states=memory, encoder_attention_mask=cross,
                      cache=cache, use_cache=cache is not None)
            x = x[0] if isinstance(x, tuple) else x
        return d.layer_norm(x)

    def new_cache(self):
        """An empty key/value cache for ``decoder_states`` (self- and cross-attention)."""
        import copy

        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        config = copy.deepcopy(self.config)
        config.num_hidden_layers = config.decoder_layers
        return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor, memory_valid: torch.Tensor, prompt: list[int], stop: int,
               max_tokens: int, use_cache: bool = True) -> list[list[int]]:
        """Greedy decoding after ``prompt`` until ``stop``; only text tokens (ids below ``stop``) and
        ``stop`` itself may be chosen (Whisper's special and timestamp tokens lie above it)."""
        batch = memory.shape[0]
        ids = torch.tensor([prompt] * batch, device=memory.device)
        done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        cache = self.new_cache() if use_cache else None
        step_input = ids
        for _ in range(min(max_tokens, self.config.max_target_positions - len(prompt))):
            states = self.decoder_states(step_input if use_cache else ids, memory, memory_valid, cache)
            logits = self.project(states[:, -1])
            logits[:, stop + 1:] = float("-inf")
            step = torch.where(done, torch.full_like(ids[:, 0], stop), logits.argmax(-1))
            ids = torch.cat([ids, step[:, None]], 1)
            step_input = step[:, None]
            done |= step == stop
            if bool(done.all()):
                break
        out = []
        for row in ids[:, len(prompt):].tolist():
            out.append(row[: row.index(stop)] if stop in row else row)
        return out

    # ------------------------------------------------------------------ weights

    def frozen_parts(self, encoder_layers: int, decoder: bool, token_embeddings: bool = False,
                     convolutions: bool = False) -> list[nn.Module]:
        """The modules the ``freeze`` options keep as pretrained: the convolution front end and the
        lowest ``encoder_layers`` layers (0: none; ``quantize_position``: all below the quantizer),
        the front end alone with ``convolutions`` (every layer learns, the 100 Hz convolutions' costly
        backward is skipped), the decoder, and ``token_embeddings``: the decoder's (tied) vocabulary
        table, most of a small Whisper's weights (51,864 x 384 for tiny.en)."""
        if not 0 <= encoder_layers <= len(self.encoder.layers):
            raise ValueError(f"freeze.encoder_layers {encoder_layers}: the encoder has {len(self.encoder.layers)} layers")
        parts: list[nn.Module] = []
        if encoder_layers or convolutions:
            parts += [self.encoder.conv1, self.encoder.conv2, *self.encoder.layers[:encoder_layers]]
        if self.decoder is not None:
            if decoder:
                parts.append(self.decoder)
            elif token_embeddings:
                parts.append(self.decoder.embed_tokens)
        return parts

    def load_whisper_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Weights in ``WhisperForConditionalGeneration``'s names (``model.encoder.*``, ``model.decoder.*``)."""
        ours = {}
        for name, tensor in state.items():
            if name.startswith("model.encoder.") or name.startswith("model.decoder."):
                ours[name[len("model."):]] = tensor
        if self.decoder is None:
            ours = {k: v for k, v in ours.items() if k.startswith("encoder.") and _encoder_layer(k) <
                    self.settings.quantize_position and not k.startswith("encoder.layer_norm.")}
        own = self.state_dict()
        missing = [k for k in own if (k.startswith("encoder.") or k.startswith("decoder.")) and k not in ours]
        unexpected = [k for k in ours if k not in own]
        if missing or unexpected:
            raise ValueError(f"{where}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in ours.items():
            if own[name].shape != tensor.shape:
                raise ValueError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}")
        self.load_state_dict(ours, strict=False)
        self._init_positions2()


def _encoder_layer(name: str) -> int:
    """Layer index of an ``encoder.layers.N.*`` name; -1 for the encoder's other weights."""
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else -1


# ---------------------------------------------------------------------- GLM-4-Voice's folder format

def glm_state_names(model: WhisperVQ) -> dict[str, str]:
    """Our state-dict names -> a GLM-4-Voice ``WhisperVQEncoder`` safetensors' names."""
    names = {}
    for name in model.state_dict():
        if name.startswith("encoder."):
            names[name] = name[len("encoder."):]
    names |= {"quantizer.codebook": "codebook.weight", "quantizer.cluster_size": "ema_count",
              "quantizer.embed_sum": "ema_weight", "embed_positions2.weight": "embed_positions2.weight"}
    return names


def load_glm_folder(folder: str | Path) -> WhisperVQ:
    """A GLM-4-Voice tokenizer folder (``config.json`` of a ``WhisperVQConfig``, ``model.safetensors``
    of a ``WhisperVQEncoder``) as a ``WhisperVQ`` that tokenizes (encoder only, eval mode)."""
    from safetensors.torch import load_file
    from transformers import WhisperConfig

    folder = Path(folder)
    values = json.loads((folder / "config.json").read_text())
    settings = WhisperVQSettings.from_dict({**values, "quantize_encoder_only": True})
    whisper_keys = {k: v for k, v in values.items() if k not in asdict(settings)}
    model = WhisperVQ(WhisperConfig(**whisper_keys), settings)
    weights = load_file(str(folder / "model.safetensors"))
    state = {}
    for ours, theirs in glm_state_names(model).items():
        tensor = weights.get(theirs, weights.get(f"model.encoder.{theirs}"))
        if tensor is None:
            if theirs in ("ema_count", "ema_weight"):  # an inference-only export may leave them out
                continue
            raise ValueError(f"{folder / 'model.safetensors'}: no tensor {theirs!r}")
        state[ours] = tensor.float()
    model.load_state_dict(state, strict=False)
    model.quantizer.initialized.fill_(True)
    return model.eval()
