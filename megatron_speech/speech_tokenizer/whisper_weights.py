"""Pretrained Whisper weights onto ``transformers``' Whisper modules, from a CTranslate2 folder.

The Whisper-derived speech tokenizer (issue 18) starts from a pretrained ASR model. Users on a
cluster start from a Hugging Face ``openai/whisper-*`` folder, which ``transformers`` loads itself
(``WhisperForConditionalGeneration.from_pretrained``). The small Whisper this machine has is a
CTranslate2 folder, so this module maps CTranslate2's ``WhisperSpec`` variables onto the names of
``WhisperForConditionalGeneration`` and builds its config from the weights' shapes.

CTranslate2 fuses projections that ``transformers`` keeps apart: self-attention's query, key and
value are one ``linear_0`` (split in thirds), cross-attention's key and value one ``linear_1`` (split
in halves). Whisper's key projections have no bias; CTranslate2 stores zeros there, which are
checked and dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from megatron_speech.speech_tokenizer.ctranslate2_format import CTranslate2FormatError, read_model

_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/")


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _norm(prefix: str, v: dict, name: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": _t(v[f"{name}/gamma"]), f"{prefix}.bias": _t(v[f"{name}/beta"])}


def _linear(prefix: str, v: dict, name: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": _t(v[f"{name}/weight"]), f"{prefix}.bias": _t(v[f"{name}/bias"])}


def _split(prefix: str, names: tuple[str, ...], v: dict, fused: str, where: str) -> dict[str, torch.Tensor]:
    """A fused projection split into ``names`` (``k_proj`` without a bias, as in Whisper)."""
    weights = np.split(v[f"{fused}/weight"], len(names))
    biases = np.split(v[f"{fused}/bias"], len(names))
    out = {}
    for name, weight, bias in zip(names, weights, biases):
        out[f"{prefix}.{name}.weight"] = _t(weight)
        if name == "k_proj":
            if np.abs(bias).max() > 0:
                raise CTranslate2FormatError(f"{where}: {fused} has a non-zero key bias, which Whisper has not")
        else:
            out[f"{prefix}.{name}.bias"] = _t(bias)
    return out


def _attention(prefix: str, v: dict, name: str, fused: tuple[str, ...], where: str) -> dict[str, torch.Tensor]:
    """Self-attention (``linear_0`` = q|k|v, ``linear_1`` = out) or cross-attention (``linear_0`` = q,
    ``linear_1`` = k|v, ``linear_2`` = out)."""
    out = {}
    if fused == ("q_proj", "k_proj", "v_proj"):
        out |= _split(prefix, fused, v, f"{name}/linear_0", where)
        out |= _linear(f"{prefix}.out_proj", v, f"{name}/linear_1")
    else:
        out |= _linear(f"{prefix}.q_proj", v, f"{name}/linear_0")
        out |= _split(prefix, ("k_proj", "v_proj"), v, f"{name}/linear_1", where)
        out |= _linear(f"{prefix}.out_proj", v, f"{name}/linear_2")
    return out


def _layer_count(v: dict, side: str) -> int:
    return 1 + max(int(m.group(2)) for name in v if (m := _LAYER.match(name)) and m.group(1) == side)


def state_dict_from_ctranslate2(variables: dict[str, np.ndarray], where: str = "") -> dict[str, torch.Tensor]:
    """``WhisperForConditionalGeneration`` state dict (float32) from ``WhisperSpec`` variables."""
    v = variables
    out: dict[str, torch.Tensor] = {
        "model.encoder.conv1.weight": _t(v["encoder/conv1/weight"]), "model.encoder.conv1.bias": _t(v["encoder/conv1/bias"]),
        "model.encoder.conv2.weight": _t(v["encoder/conv2/weight"]), "model.encoder.conv2.bias": _t(v["encoder/conv2/bias"]),
        "model.encoder.embed_positions.weight": _t(v["encoder/position_encodings/encodings"]),
        "model.decoder.embed_tokens.weight": _t(v["decoder/embeddings/weight"]),
        "model.decoder.embed_positions.weight": _t(v["decoder/position_encodings/encodings"]),
        "proj_out.weight": _t(v.get("decoder/projection/weight", v["decoder/embeddings/weight"])),
    }
    out |= _norm("model.encoder.layer_norm", v, "encoder/layer_norm")
    out |= _norm("model.decoder.layer_norm", v, "decoder/layer_norm")
    qkv = ("q_proj", "k_proj", "v_proj")
    for i in range(_layer_count(v, "encoder")):
        ours, theirs = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        out |= _attention(f"{ours}.self_attn", v, f"{theirs}/self_attention", qkv, where)
        out |= _norm(f"{ours}.self_attn_layer_norm", v, f"{theirs}/self_attention/layer_norm")
        out |= _ffn(ours, v, theirs)
    for i in range(_layer_count(v, "decoder")):
        ours, theirs = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        out |= _attention(f"{ours}.self_attn", v, f"{theirs}/self_attention", qkv, where)
        out |= _norm(f"{ours}.self_attn_layer_norm", v, f"{theirs}/self_attention/layer_norm")
        out |= _attention(f"{ours}.encoder_attn", v, f"{theirs}/attention", ("q_proj",), where)
        out |= _norm(f"{ours}.encoder_attn_layer_norm", v, f"{theirs}/attention/layer_norm")
        out |= _ffn(ours, v, theirs)
    return out


def _ffn(ours: str, v: dict, theirs: str) -> dict[str, torch.Tensor]:
    return {**_linear(f"{ours}.fc1", v, f"{theirs}/ffn/linear_0"), **_linear(f"{ours}.fc2", v, f"{theirs}/ffn/linear_1"),
            **_norm(f"{ours}.final_layer_norm", v, f"{theirs}/ffn/layer_norm")}


def whisper_config_from_ctranslate2(variables: dict[str, np.ndarray]):
    """A ``WhisperConfig`` with the shapes the weights have (heads from the stored head counts)."""
    from transformers import WhisperConfig

    v = variables
    vocab, d_model = v["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=int(vocab), d_model=int(d_model), num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        encoder_layers=_layer_count(v, "encoder"), decoder_layers=_layer_count(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        tie_word_embeddings=True,
    )


def load_ctranslate2_whisper(folder: str | Path):
    """``WhisperForConditionalGeneration`` (float32, eval mode) with a CTranslate2 folder's weights."""
    from transformers import WhisperForConditionalGeneration

    model_file = read_model(folder)
    if model_file.spec != "WhisperSpec":
        raise CTranslate2FormatError(f"{folder}: a {model_file.spec}, not a WhisperSpec")
    model = WhisperForConditionalGeneration(whisper_config_from_ctranslate2(model_file.variables))
    state = state_dict_from_ctranslate2(model_file.variables, str(folder))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise CTranslate2FormatError(f"{folder}: weights do not fit Whisper: missing {missing[:5]}, "
                                     f"unexpected {unexpected[:5]}")
    return model.eval()
