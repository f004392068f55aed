"""The speech GPT's shape and numerics as one small dataclass, loadable from YAML.

Megatron's ``TransformerConfig`` has a few hundred fields; a recipe should name only the ones that
define the model. ``to_transformer_config`` fills in the rest: the modern LLM shape (RoPE, RMSNorm,
SwiGLU, grouped-query attention, no biases) and kernel-fusion switches chosen by the backends present.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from megatron_speech import backends
from megatron_speech.config_loader import build
from megatron_speech.parallel import ParallelConfig

# The fields that fix the weights' shapes: checkpoints must agree on these to load.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                "tie_embeddings", "qkv_bias")
# ...and with these, the function the weights compute: a run resumes or starts from a checkpoint only
# where all agree (a changed rotary_base loads without error and computes something else).
FUNCTION_FIELDS = SHAPE_FIELDS + ("rotary_base", "norm_epsilon", "make_vocab_size_divisible_by")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SpeechGPTConfig:
    num_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: int = 2
    ffn_hidden_size: int = 352
    max_sequence_length: int = 256
    rotary_base: int = 10000
    norm_epsilon: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2-style biases on the query/key/value projections
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    # The vocabulary is padded to a multiple of this (and of the tensor-parallel size).
    make_vocab_size_divisible_by: int = 128
    params_dtype: str = "float32"  # float32 | bfloat16 | float16
    fp8: str | None = None  # None | "hybrid" | "e4m3": needs Transformer Engine and Hopper
    transformer_impl: str = "auto"  # auto | local | transformer_engine

    def __post_init__(self) -> None:
        if self.params_dtype not in DTYPES:
            raise ValueError(f"params_dtype must be one of {sorted(DTYPES)}, got {self.params_dtype!r}")
        if self.transformer_impl not in ("auto", "local", "transformer_engine"):
            raise ValueError(f"unknown transformer_impl {self.transformer_impl!r}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError("num_attention_heads must be a multiple of num_query_groups")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.params_dtype]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SpeechGPTConfig":
        return build(cls, values, "model")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SpeechGPTConfig":
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def uses_transformer_engine(self) -> bool:
        if self.transformer_impl == "local":
            return False
        have_te = backends.available().transformer_engine
        if self.transformer_impl == "transformer_engine" and not have_te:
            raise RuntimeError(
                "transformer_impl=transformer_engine, but Transformer Engine is not importable "
                f"on this machine ({backends.available().describe()})"
            )
        return have_te

    def padded_vocab_size(self, vocab_size: int, tensor_parallel_size: int) -> int:
        return pad_vocab_size(vocab_size, self.make_vocab_size_divisible_by, tensor_parallel_size)

    def to_transformer_config(self, parallel: ParallelConfig):
        from megatron.core.transformer import TransformerConfig

        if self.fp8 and not backends.available().fp8:
            raise RuntimeError(
                f"fp8={self.fp8!r} needs Transformer Engine on a Hopper-or-newer GPU; this machine "
                f"has {backends.available().describe()}"
            )
        on_gpu = backends.available().cuda
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            ffn_hidden_size=self.ffn_hidden_size,
            kv_channels=self.hidden_size // self.num_attention_heads,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_epsilon,
            gated_linear_unit=True,
            activation_func=torch.nn.functional.silu,
            add_bias_linear=False,
            add_qkv_bias=self.qkv_bias,
            init_method_std=self.init_method_std,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            params_dtype=self.torch_dtype,
            bf16=self.torch_dtype == torch.bfloat16,
            fp16=self.torch_dtype == torch.float16,
            fp8=self.fp8,
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            sequence_parallel=parallel.sequence_parallel,
            pipeline_dtype=self.torch_dtype,
            use_cpu_initialization=not on_gpu,
            # Fused kernels exist only on GPU; the unfused paths compute the same function.
            bias_activation_fusion=on_gpu,
            masked_softmax_fusion=on_gpu,
            persist_layer_norm=on_gpu,
            gradient_accumulation_fusion=on_gpu and backends.available().apex,
            apply_rope_fusion=on_gpu and backends.available().transformer_engine,
            # gloo has no batched isend/irecv; per-tensor p2p works on both backends.
            batch_p2p_comm=False,
        )


def pad_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel_size: int) -> int:
    """Round up to a multiple of ``lcm(divisible_by, tensor_parallel_size)``.

    Megatron-LM pads to ``divisible_by * TP``, which gives each TP size its own embedding shape, so a
    checkpoint saved at TP=2 would not load at TP=1. Any power-of-two TP up to ``divisible_by``
    divides ``divisible_by``, so with this rule the padded size, and the checkpoint's tensor shapes,
    are the same for every usual layout.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    multiple = math.lcm(divisible_by, tensor_parallel_size)
    return -(-vocab_size // multiple) * multiple
