"""Starting weights for a new run: a Hugging Face text LM with its vocabulary expanded, or a
weights-only Megatron checkpoint. Both are checked against the run's model and tokenizer first."""

from __future__ import annotations

from megatron_speech.convert.hf import (
    HFCheckpointError,
    from_hf_state_dict,
    model_config_from_hf,
    read_hf_checkpoint,
    with_speech_vocabulary,
)
from megatron_speech.models.config import SHAPE_FIELDS, SpeechGPTConfig
from megatron_speech.models.sharding import load_full_state_dict
from megatron_speech.tokenizer import SpeechTextTokenizer
from megatron_speech.training import checkpoint


def run_metadata(model: SpeechGPTConfig, tokenizer: SpeechTextTokenizer) -> dict:
    """What a checkpoint records about the weights, and what loading checks."""
    return {"vocab_size": tokenizer.vocab_size, "tokenizer_fingerprint": tokenizer.fingerprint(),
            "text_vocab_size": tokenizer.text_vocab_size, "codebook_size": tokenizer.codebook_size,
            "model": model.to_dict()}


def text_lm_state(directory: str, model: SpeechGPTConfig, tokenizer: SpeechTextTokenizer, seed: int) -> dict:
    """The full (canonical) speech-GPT state dict of an HF text LM, vocabulary expanded."""
    hf_config, tensors = read_hf_checkpoint(directory)
    hf_shape = model_config_from_hf(hf_config, f"{directory}/config.json")
    diff = {k: (getattr(hf_shape, k), getattr(model, k)) for k in SHAPE_FIELDS + ("rotary_base",)
            if getattr(hf_shape, k) != getattr(model, k)}
    if diff:
        raise HFCheckpointError(f"{directory}: the HF model's shape differs from the run's (HF, run): {diff}")
    return with_speech_vocabulary(from_hf_state_dict(tensors, hf_shape, directory), tokenizer, seed, directory)


def initialise(model, config, tokenizer: SpeechTextTokenizer) -> str:
    """Load ``config.init``'s weights into this rank's model; returns what was loaded, for the log."""
    init = config.init
    if init.hf_checkpoint:
        load_full_state_dict(model, text_lm_state(init.hf_checkpoint, config.model, tokenizer, init.seed))
        return f"HF text LM {init.hf_checkpoint} (+{tokenizer.vocab_size - tokenizer.text_vocab_size} new rows)"
    if init.megatron_checkpoint:
        info = checkpoint.read_info(init.megatron_checkpoint)
        if info is None:
            raise checkpoint.CheckpointError(f"{init.megatron_checkpoint}: no checkpoint ('latest' is missing)")
        checkpoint.check_compatible(info, run_metadata(config.model, tokenizer))
        checkpoint.load(info, [model])
        return f"weights of {info.path}"
    return "random"
