"""Build this rank's piece of the speech GPT as a Megatron-Core ``GPTModel``.

The model is a plain Megatron GPT; what makes it a speech GPT is its vocabulary (text + speech codes,
see ``megatron_speech.lm_tokenizer``). The layer spec is the only thing that differs between machines:
Transformer Engine's fused layers where TE is present, Megatron's local layers elsewhere.
"""

from __future__ import annotations

import torch

from megatron_speech import parallel as par
from megatron_speech.models.config import SpeechGPTConfig
from megatron_speech.parallel import ParallelConfig


def layer_spec(config: SpeechGPTConfig):
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if config.uses_transformer_engine():
        return get_gpt_layer_with_transformer_engine_spec()
    return get_gpt_layer_local_spec(normalization="RMSNorm")


def _mask_padded_vocab(model, vocab_size: int) -> None:
    """Give padded vocabulary entries a logit of -inf, so they take no part in the softmax.

    The padding is an artefact of the layout (``pad_vocab_size``); left in the softmax, it would make
    the loss depend on it. Masked, the loss is the same for every layout and padded size, and
    generation can never sample a padding id.
    """
    from megatron.core import parallel_state

    padded_local = model.output_layer.output_size_per_partition
    start = parallel_state.get_tensor_model_parallel_rank() * padded_local
    global_ids = torch.arange(start, start + padded_local)
    pad = global_ids >= vocab_size
    if not pad.any():
        return

    def hook(module, inputs, output):
        logits, bias = output
        return logits.masked_fill(pad.to(logits.device), float("-inf")), bias

    model.output_layer.register_forward_hook(hook)


def build_model(config: SpeechGPTConfig, vocab_size: int, parallel: ParallelConfig):
    """This pipeline stage's ``GPTModel``; ``vocab_size`` is the unpadded tokenizer size."""
    from megatron.core.models.gpt import GPTModel

    padded = config.padded_vocab_size(vocab_size, parallel.tensor_model_parallel_size)
    model = GPTModel(
        config=config.to_transformer_config(parallel),
        transformer_layer_spec=layer_spec(config),
        vocab_size=padded,
        max_sequence_length=config.max_sequence_length,
        pre_process=par.is_first_stage(),
        post_process=par.is_last_stage(),
        share_embeddings_and_output_weights=config.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=config.rotary_base,
    )
    model.true_vocab_size = vocab_size
    if model.post_process:
        _mask_padded_vocab(model, vocab_size)
    return model.to(config.torch_dtype)


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """Logits over the true vocabulary, gathered across tensor-parallel ranks ([batch, seq, vocab]).

    With pipeline parallelism every stage calls this; activations go stage to stage by point-to-point
    sends, and the last stage returns the logits (the others None). Evaluation and conversion checks
    compare these across layouts.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    if not model.pre_process:
        hidden = torch.empty(tokens.shape[1], tokens.shape[0], model.config.hidden_size,
                             dtype=model.config.params_dtype, device=par.collective_device())
        torch.distributed.recv(hidden, ps.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(hidden)
    output = model(tokens, positions, None)
    if not model.post_process:
        torch.distributed.send(output.contiguous(), ps.get_pipeline_model_parallel_next_rank())
        return None
    logits = gather_from_tensor_model_parallel_region(output)
    return logits[..., : model.true_vocab_size]
