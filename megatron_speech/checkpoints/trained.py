"""A trained model for inference: built from a training checkpoint's own recorded shape, with its
weights, after checking that it belongs to the tokenizer at hand. Used by conversion, synthesis and
evaluation alike, so each loads a checkpoint the same way."""

from __future__ import annotations

from megatron_speech.checkpoints import megatron as checkpoint
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.models.config import SpeechGPTConfig
from megatron_speech.models.gpt import build_model
from megatron_speech.parallel import ParallelConfig


def run_metadata(model: SpeechGPTConfig, tokenizer: SpeechTextTokenizer) -> dict:
    """What a checkpoint records about the weights, and what loading checks."""
    return {"vocab_size": tokenizer.vocab_size, "tokenizer_fingerprint": tokenizer.fingerprint(),
            "text_vocab_size": tokenizer.text_vocab_size, "codebook_size": tokenizer.codebook_size,
            "model": model.to_dict()}


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
