"""Starting weights for a new run: a Hugging Face text LM with its vocabulary expanded, or a
weights-only Megatron checkpoint. Both are checked against the run's model and tokenizer first."""

from __future__ import annotations

from megatron_speech.convert.hf import HFCheckpointError, load_as_speech_gpt
from megatron_speech.models.config import SHAPE_FIELDS, SpeechGPTConfig
from megatron_speech.models.gpt import build_model
from megatron_speech.models.sharding import load_full_state_dict
from megatron_speech.parallel import ParallelConfig
from megatron_speech.tokenizer import SpeechTextTokenizer
from megatron_speech.training import checkpoint
from megatron_speech.training.config import InitConfig


def run_metadata(model: SpeechGPTConfig, tokenizer: SpeechTextTokenizer) -> dict:
    """What a checkpoint records about the weights, and what loading checks."""
    return {"vocab_size": tokenizer.vocab_size, "tokenizer_fingerprint": tokenizer.fingerprint(),
            "text_vocab_size": tokenizer.text_vocab_size, "codebook_size": tokenizer.codebook_size,
            "model": model.to_dict()}


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


def load_trained_model(root: str, tokenizer: SpeechTextTokenizer, step: int | None = None,
                       parallel: ParallelConfig | None = None):
    """(model, its config, checkpoint info): a model built from a training checkpoint's own
    recorded shape, with its weights, for this process's layout (default TP=1, PP=1). The caller
    has initialised ``megatron_speech.parallel`` with that layout."""
    info = checkpoint.read_info(root, step)
    if info is None:
        raise checkpoint.CheckpointError(f"{root}: no checkpoint ('latest' is missing)")
    config = SpeechGPTConfig.from_dict(info.metadata["model"])
    checkpoint.check_compatible(info, run_metadata(config, tokenizer))
    model = build_model(config, tokenizer.vocab_size, parallel or ParallelConfig())
    checkpoint.load(info, [model])
    return model, config, info
