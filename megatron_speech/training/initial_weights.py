"""Starting weights for a new run: a Hugging Face text LM with its vocabulary expanded, or a
weights-only Megatron checkpoint. Both are checked against the run's model and tokenizer first."""

from __future__ import annotations

from megatron_speech.checkpoints import megatron as checkpoint
from megatron_speech.checkpoints.hf import HFCheckpointError, load_as_speech_gpt
from megatron_speech.checkpoints.trained import run_metadata
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.models.config import SHAPE_FIELDS, SpeechGPTConfig
from megatron_speech.models.sharding import load_full_state_dict
from megatron_speech.training.config import InitConfig


def text_lm_state(directory: str, model: SpeechGPTConfig, tokenizer: SpeechTextTokenizer, seed: int) -> dict:
    """The full (canonical) speech-GPT state dict of an HF text LM, vocabulary expanded."""
    hf_shape, full = load_as_speech_gpt(directory, tokenizer, seed)
    diff = {k: (getattr(hf_shape, k), getattr(model, k)) for k in SHAPE_FIELDS + ("rotary_base",)
            if getattr(hf_shape, k) != getattr(model, k)}
    if diff:
        raise HFCheckpointError(f"{directory}: the HF model's shape differs from the run's (HF, run): {diff}")
    return full


def initialise(model, init: InitConfig, model_config: SpeechGPTConfig, tokenizer: SpeechTextTokenizer) -> str:
    """Load ``init``'s weights into this rank's model; returns what was loaded, for the log."""
    if init.hf_checkpoint:
        load_full_state_dict(model, text_lm_state(init.hf_checkpoint, model_config, tokenizer, init.seed))
        return f"HF text LM {init.hf_checkpoint} (+{tokenizer.vocab_size - tokenizer.text_vocab_size} new rows)"
    if init.megatron_checkpoint:
        info = checkpoint.read_info(init.megatron_checkpoint)
        if info is None:
            raise checkpoint.CheckpointError(f"{init.megatron_checkpoint}: no checkpoint ('latest' is missing)")
        checkpoint.check_compatible(info, run_metadata(model_config, tokenizer))
        checkpoint.load(info, [model])
        return f"weights of {info.path}"
    return "random"
