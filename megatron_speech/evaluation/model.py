"""The language model under evaluation: a Megatron training checkpoint (saved at any TP/PP; it is
resharded on load) or a Hugging Face folder written by ``tools/convert_checkpoint.py``, built as
the project's own Megatron model at this process's tensor-parallel size (pipeline size 1: decoding
needs every layer in one place), so both are evaluated by the same code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.parallel import ParallelConfig

HF_TOKENIZER_DIR = "speech_text_tokenizer"  # where convert_checkpoint puts the project's tokenizer


@dataclass
class ModelSource:
    checkpoint: str | None = None  # a Megatron checkpoint root (with 'latest')
    step: int | None = None  # default: the newest
    tokenizer: str | None = None  # the speech-text tokenizer folder (default for HF: <hf>/speech_text_tokenizer)
    hf: str | None = None  # or a Hugging Face folder from convert_checkpoint
    tensor_model_parallel_size: int = 1

    def __post_init__(self) -> None:
        if bool(self.checkpoint) == bool(self.hf):
            raise ValueError("model: give checkpoint or hf, one of them")
        if self.checkpoint and not self.tokenizer:
            raise ValueError("model: a Megatron checkpoint needs model.tokenizer (the speech-text tokenizer folder)")

    def tokenizer_dir(self) -> Path:
        return Path(self.tokenizer) if self.tokenizer else Path(self.hf) / HF_TOKENIZER_DIR

    def parallel(self) -> ParallelConfig:
        return ParallelConfig(tensor_model_parallel_size=self.tensor_model_parallel_size)


def load_lm(source: ModelSource):
    """(model in eval mode, tokenizer, max sequence length). The caller has initialised
    ``megatron_speech.parallel`` with ``source.parallel()``."""
    tokenizer = SpeechTextTokenizer.load(source.tokenizer_dir())
    if source.checkpoint:
        from megatron_speech.checkpoints.trained import load_trained_model

        model, config, _ = load_trained_model(source.checkpoint, tokenizer, source.step, source.parallel())
    else:
        from megatron_speech.checkpoints.hf import load_as_speech_gpt
        from megatron_speech.models.gpt import build_model
        from megatron_speech.models.sharding import load_full_state_dict

        config, full = load_as_speech_gpt(source.hf, tokenizer)
        model = build_model(config, tokenizer.vocab_size, source.parallel())
        load_full_state_dict(model, full)
    return model.eval(), tokenizer, config.max_sequence_length
