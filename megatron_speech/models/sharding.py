"""Move weights between one full (TP=1, PP=1) state dict and a rank's tensor/pipeline shard.

The full state dict is the project's canonical weight format: checkpoint conversion, vocabulary
expansion and the parallel-layout tests all speak it, so any TP/PP layout can be produced from it
and gathered back into it. Its names are the local layer spec's (``decoder.layers.N.`` with global
N); Transformer Engine's fused-norm names are mapped onto them.

How a tensor is split comes from the attributes Megatron itself sets on each parameter
(``tensor_model_parallel``, ``partition_dim``); the one layout those attributes do not describe is
SwiGLU's fused ``linear_fc1``, whose rows are ``[gate; up]`` and whose shard on rank r is
``[gate_r; up_r]``.
"""

from __future__ import annotations

import re
import torch
import torch.distributed as dist

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
# Transformer Engine fuses each pre-norm into the following linear layer.
_TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
_OUTPUT_WEIGHT = "output_layer.weight"
_EMBEDDING_WEIGHT = "embedding.word_embeddings.weight"


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def _tp_rank_size() -> tuple[int, int]:
    from megatron.core import parallel_state

    return (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_world_size(),
    )


def global_name(model: torch.nn.Module, local_name: str) -> str:
    """The canonical full-model name of one of this stage's parameters."""
    match = _LAYER.match(local_name)
    if match:
        layer = model.decoder.layers[int(match.group(1))]
        local_name = f"decoder.layers.{layer.layer_number - 1}." + local_name[match.end():]
    for te_suffix, local_suffix in _TE_TO_LOCAL.items():
        if local_name.endswith(te_suffix):
            return local_name[: -len(te_suffix)] + local_suffix
    return local_name


def _is_glu_fc1(model: torch.nn.Module, name: str) -> bool:
    return model.config.gated_linear_unit and name.endswith("mlp.linear_fc1.weight")


def _is_tied_output_copy(model: torch.nn.Module, name: str) -> bool:
    """The last pipeline stage's copy of tied embeddings: not a weight of its own."""
    return name == _OUTPUT_WEIGHT and model.share_embeddings_and_output_weights


def _shard(full: torch.Tensor, param: torch.Tensor, glu: bool) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False):
        return full
    rank, size = _tp_rank_size()
    dim = param.partition_dim
    if glu:
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(size, dim=dim)[rank], up.chunk(size, dim=dim)[rank]], dim=dim)
    return full.chunk(size, dim=dim)[rank]


def _unshard(local: torch.Tensor, param: torch.Tensor, glu: bool) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False):
        return local
    _, size = _tp_rank_size()
    dim = param.partition_dim
    pieces = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(pieces, local.contiguous(), group=_tp_group())
    if glu:
        gates, ups = zip(*(p.chunk(2, dim=dim) for p in pieces))
        return torch.cat([*gates, *ups], dim=dim)
    return torch.cat(pieces, dim=dim)


def _is_vocab(key: str) -> bool:
    return key in (_EMBEDDING_WEIGHT, _OUTPUT_WEIGHT)


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Padding rows are zero: they are masked out of the logits, so their value never matters."""
    if tensor.shape[0] > rows:
        raise ValueError(f"vocabulary of {tensor.shape[0]} rows does not fit a model of {rows}")
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def load_full_state_dict(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shard of ``full`` into ``model`` (one pipeline stage, one TP rank)."""
    missing = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = _EMBEDDING_WEIGHT if _is_tied_output_copy(model, name) else global_name(model, name)
            if key not in full:
                missing.append(key)
                continue
            tensor = full[key]
            if _is_vocab(key):
                tensor = _pad_rows(tensor, model.vocab_size)
            shard = _shard(tensor, param, _is_glu_fc1(model, name))
            if shard.shape != param.shape:
                raise ValueError(f"{key}: shard shape {tuple(shard.shape)} != parameter {tuple(param.shape)}")
            param.copy_(shard)
    if missing:
        raise KeyError(f"full state dict lacks {len(missing)} weights, e.g. {missing[:3]}")


def gather_full_state_dict(model: torch.nn.Module, grads: bool = False) -> dict[str, torch.Tensor]:
    """The full model's weights (or gradients) on every rank; collective over TP and PP groups.

    Vocabulary matrices hold the true vocabulary only, whatever padding this layout used.

    With Megatron's DDP wrapper gradients live in ``main_grad``; otherwise in ``grad``.
    """
    from megatron.core import parallel_state

    stage: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if _is_tied_output_copy(model, name):
            continue
        tensor = param.detach()
        if grads:
            tensor = getattr(param, "main_grad", None)
            tensor = param.grad if tensor is None else tensor
            if tensor is None:
                tensor = torch.zeros_like(param)
        key = global_name(model, name)
        full = _unshard(tensor.detach(), param, _is_glu_fc1(model, name))
        if _is_vocab(key):
            full = full[: model.true_vocab_size]
        stage[key] = full.cpu()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    if pp_size == 1:
        return stage
    stages: list[dict[str, torch.Tensor] | None] = [None] * pp_size
    dist.all_gather_object(stages, stage, group=parallel_state.get_pipeline_model_parallel_group())
    merged: dict[str, torch.Tensor] = {}
    for part in stages:
        merged.update(part or {})
    return merged
