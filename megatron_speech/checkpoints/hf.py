"""Hugging Face Llama/Qwen2 checkpoints <-> the project's canonical full state dict.

The speech GPT is a Llama-shaped decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention), so a
converted checkpoint is a plain ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM`` when the attention has
q/k/v biases) that ``transformers`` loads with ``AutoModelForCausalLM``. The only real work is the
attention projection: Megatron stores ``linear_qkv`` grouped by key/value head as
``[q heads of group g; k_g; v_g]`` for each group, Hugging Face stores separate q, k and v matrices.

Checkpoints on disk are ``config.json`` plus safetensors (one file, or shards with an index).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from megatron_speech import atomic
from megatron_speech.models.config import SpeechGPTConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
_SHARD_BYTES = 4 * 1024**3


class HFCheckpointError(ValueError):
    """An HF checkpoint this converter cannot read faithfully: names the file and the reason."""


# ---------------------------------------------------------------- configs


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type not in ("default", None):
        raise HFCheckpointError(f"{where}: RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict[str, Any], where: str = "config.json") -> SpeechGPTConfig:
    """The speech GPT shape of an HF decoder config (raises for shapes it cannot express)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFCheckpointError(f"{where}: model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise HFCheckpointError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size {hf['hidden_size']}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
        raise HFCheckpointError(f"{where}: only SwiGLU MLPs without bias are supported")
    if model_type != "qwen2" and hf.get("attention_bias"):
        raise HFCheckpointError(f"{where}: attention output bias is not supported")
    return SpeechGPTConfig(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=hf.get("num_key_value_heads") or heads,
        ffn_hidden_size=hf["intermediate_size"],
        max_sequence_length=hf.get("max_position_embeddings", 2048),
        rotary_base=_rope_theta(hf, where),
        norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2",
    )


def hf_config_from_model(config: SpeechGPTConfig, vocab_size: int, special_ids: dict[str, int]) -> dict[str, Any]:
    """A ``config.json`` for ``transformers``: Qwen2 when q/k/v carry biases, Llama otherwise."""
    model_type, arch = ("qwen2", "Qwen2ForCausalLM") if config.qkv_bias else ("llama", "LlamaForCausalLM")
    return {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_query_groups,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_sequence_length,
        "rms_norm_eps": config.norm_epsilon,
        "rope_theta": float(config.rotary_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rotary_base)},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": config.params_dtype,
        **special_ids,
    }


# ---------------------------------------------------------------- weights


def _split_qkv(qkv: torch.Tensor, config: SpeechGPTConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups = config.num_query_groups
    d = config.hidden_size // config.num_attention_heads
    per_group = config.num_attention_heads // groups
    grouped = qkv.reshape(groups, (per_group + 2) * d, *qkv.shape[1:])
    q, k, v = grouped.split([per_group * d, d, d], dim=1)
    flat = lambda t: t.reshape(-1, *qkv.shape[1:])  # noqa: E731
    return flat(q), flat(k), flat(v)


def _merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: SpeechGPTConfig) -> torch.Tensor:
    groups = config.num_query_groups
    d = config.hidden_size // config.num_attention_heads
    rest = q.shape[1:]
    q, k, v = (t.reshape(groups, -1, *rest) for t in (q, k, v))
    assert k.shape[1] == d and v.shape[1] == d
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _layer_map(i: int) -> dict[str, str]:
    """Canonical name -> HF name for the per-layer tensors that map one to one."""
    m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
    return {
        m + "input_layernorm.weight": h + "input_layernorm.weight",
        m + "pre_mlp_layernorm.weight": h + "post_attention_layernorm.weight",
        m + "self_attention.linear_proj.weight": h + "self_attn.o_proj.weight",
        m + "mlp.linear_fc2.weight": h + "mlp.down_proj.weight",
    }


def to_hf_state_dict(full: dict[str, torch.Tensor], config: SpeechGPTConfig) -> dict[str, torch.Tensor]:
    hf = {
        "model.embed_tokens.weight": full["embedding.word_embeddings.weight"],
        "model.norm.weight": full["decoder.final_layernorm.weight"],
    }
    if not config.tie_embeddings:
        hf["lm_head.weight"] = full["output_layer.weight"]
    for i in range(config.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        hf.update({hname: full[mname] for mname, hname in _layer_map(i).items()})
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            q, k, v = _split_qkv(full[m + f"self_attention.linear_qkv.{suffix}"], config)
            hf.update({h + f"self_attn.q_proj.{suffix}": q, h + f"self_attn.k_proj.{suffix}": k,
                       h + f"self_attn.v_proj.{suffix}": v})
        gate, up = full[m + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        hf.update({h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up})
    return {name: t.contiguous() for name, t in hf.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], config: SpeechGPTConfig, where: str = "") -> dict[str, torch.Tensor]:
    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise HFCheckpointError(f"{where}: tensor {name!r} is missing")
        return hf[name]

    full = {
        "embedding.word_embeddings.weight": take("model.embed_tokens.weight"),
        "decoder.final_layernorm.weight": take("model.norm.weight"),
    }
    if not config.tie_embeddings:
        full["output_layer.weight"] = take("lm_head.weight")
    for i in range(config.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        full.update({mname: take(hname) for mname, hname in _layer_map(i).items()})
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            full[m + f"self_attention.linear_qkv.{suffix}"] = _merge_qkv(
                *(take(h + f"self_attn.{p}_proj.{suffix}") for p in "qkv"), config
            )
        full[m + "mlp.linear_fc1.weight"] = torch.cat([take(h + "mlp.gate_proj.weight"), take(h + "mlp.up_proj.weight")])
    return full


def with_speech_vocabulary(full: dict[str, torch.Tensor], tokenizer, seed: int, where) -> dict[str, torch.Tensor]:
    """``full`` with exactly the tokenizer's vocabulary rows.

    A speech GPT already has them. Anything else is taken for a text LM whose first
    ``text_vocab_size`` rows are the tokenizer's text ids: its extra (padding) rows are dropped and
    speech rows are drawn by the vocabulary-expansion rule.
    """
    from megatron_speech.models.vocab_expansion import expand_vocabulary

    rows = full["embedding.word_embeddings.weight"].shape[0]
    if rows == tokenizer.vocab_size:
        return full
    if rows < tokenizer.text_vocab_size:
        raise HFCheckpointError(
            f"{where}: {rows} embedding rows, but the tokenizer's text part has {tokenizer.text_vocab_size} ids; "
            "build the speech tokenizer from this model's own tokenizer.json"
        )
    return expand_vocabulary(full, tokenizer.text_vocab_size, tokenizer.vocab_size, seed=seed)


def load_as_speech_gpt(directory: str | Path, tokenizer, seed: int = 0) -> tuple[SpeechGPTConfig, dict[str, torch.Tensor]]:
    """An HF folder as the speech GPT's shape and full state dict, with the tokenizer's vocabulary."""
    hf_config, tensors = read_hf_checkpoint(directory)
    config = model_config_from_hf(hf_config, f"{directory}/config.json")
    full = from_hf_state_dict(tensors, config, str(directory))
    return config, with_speech_vocabulary(full, tokenizer, seed, directory)


# ---------------------------------------------------------------- files


def read_hf_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config.json as a dict, all tensors)`` from a local HF checkpoint directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise HFCheckpointError(f"{config_path}: missing; not a Hugging Face checkpoint directory") from None
    except json.JSONDecodeError as exc:
        raise HFCheckpointError(f"{config_path}: invalid JSON ({exc})") from None
    index = directory / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = directory / name
        if not path.exists():
            raise HFCheckpointError(f"{path}: missing (only safetensors checkpoints are read)")
        try:
            tensors.update(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error type for truncated files
            raise HFCheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    return hf_config, tensors


def write_hf_checkpoint(directory: str | Path, hf_config: dict[str, Any], tensors: dict[str, torch.Tensor],
                        dtype: torch.dtype | None = None) -> None:
    """Write config + safetensors (sharded above 4 GiB) into ``directory``, each file atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype else v).contiguous() for k, v in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / f"{name}.tmp"), metadata={"format": "pt"})
        os.replace(directory / f"{name}.tmp", directory / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        atomic.write_json(directory / "model.safetensors.index.json", index)
    atomic.write_json(directory / "config.json", hf_config)
